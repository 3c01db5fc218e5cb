"""A card carrying markup: the docs pages show it as text, never as a live tag.

The fixture's Title closes the page's <title> and opens a script; its Description holds an
<img onerror=...>, which the docs pages would render as HTML from the OpenAPI document's
Markdown. Anyone may open those pages, key or no key.
"""

from __future__ import annotations

import html
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from helpers import app_client, pack_fixture

from ersilia_pack.metadata import read_metadata

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "security-card-markup"
TITLE_TAG = "<script>alert('title')</script>"
IMAGE_TAG = "<img src=x onerror=alert('description')>"


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    bundle = pack_fixture("security-card-markup", tmp_path_factory.mktemp("card-markup"))
    with app_client(bundle, workers=1, api_key="card-markup-key") as http:
        yield http


def test_the_fixture_card_carries_the_markup() -> None:
    card, _ = read_metadata(FIXTURE, [])
    assert TITLE_TAG in card["Title"] and "</title>" in card["Title"]
    assert IMAGE_TAG in card["Description"]


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_the_docs_pages_show_the_title_as_text(client: TestClient, page: str) -> None:
    response = client.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    text = response.text
    assert "</title><script>" not in text
    assert TITLE_TAG not in text
    assert html.escape("Lengths </title>" + TITLE_TAG) in text
    # The page's own title element is the only one, and holds the whole escaped title.
    assert text.count("</title>") == 1
    assert text.count("<script") == text.count("</script>")
    assert "alert(" not in text.replace(html.escape(TITLE_TAG), "")


def test_the_description_reaches_the_docs_pages_escaped(client: TestClient) -> None:
    # /docs and /redoc render info.description as Markdown, where HTML would be live.
    info = client.get("/openapi.json").json()["info"]
    assert IMAGE_TAG not in info["description"]
    assert "<img" not in info["description"]
    assert html.escape(IMAGE_TAG) in info["description"]
    # The title is shown as text by both pages, so it stays as the card has it.
    assert info["title"] == f"card-markup: Lengths </title>{TITLE_TAG}"


def test_the_card_itself_is_served_as_written(client: TestClient) -> None:
    headers = {"Authorization": "Bearer card-markup-key"}
    card = client.get("/card", headers=headers).json()
    assert IMAGE_TAG in card["Description"]
    assert card["Title"] == f"Lengths </title>{TITLE_TAG}"
