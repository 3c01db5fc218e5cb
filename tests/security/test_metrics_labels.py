"""Made-up methods and paths cannot grow /metrics: its labels come from a fixed set.

Every new label value is a series kept for the life of the server, so a caller with no key
could grow its memory (and every scrape) one request at a time.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from helpers import app_client

from ersilia_pack.runtime.http.metrics import METHODS, OTHER_METHOD, UNMATCHED

KEY = "metrics-labels-key"
BEARER = {"Authorization": f"Bearer {KEY}"}
PATH_SHAPES = ("/x{}", "/job/{}/{}", "/run/{}", "/card/{}/{}", "/static/{}", "/ui/{}", "/{}.php")


@pytest.fixture
def client(demo_repository: Path) -> Iterator[TestClient]:
    (bundle,) = [path for path in demo_repository.iterdir() if path.is_dir()]
    with app_client(bundle, workers=1, api_key=KEY) as http:
        yield http


def labels(text: str, name: str) -> set[str]:
    return set(re.findall(rf'{name}="([^"]*)"', text))


def test_made_up_methods_and_paths_add_no_series(client: TestClient) -> None:
    for path in ("/healthz", "/card", "/run/example/input"):
        client.get(path, headers=BEARER)
    before = client.get("/metrics", headers=BEARER)
    assert before.status_code == 200
    documented = set(client.get("/openapi.json").json()["paths"])

    for i in range(150):
        made_up = f"M{secrets.token_hex(4).upper()}"
        path = PATH_SHAPES[i % len(PATH_SHAPES)].format(secrets.token_hex(4), i)
        client.request(made_up, path)  # refused: no key
        client.request(made_up, path, headers=BEARER)
        client.get(path, headers=BEARER)
        client.request(made_up, "/healthz")

    after = client.get("/metrics", headers=BEARER)
    assert after.status_code == 200
    methods = labels(after.text, "method")
    routes = labels(after.text, "route")
    assert OTHER_METHOD in methods
    assert methods <= METHODS | {OTHER_METHOD}
    assert UNMATCHED in routes
    assert routes <= documented | {"/static", UNMATCHED}, routes - documented
    # 600 requests of made-up methods and paths add a few series, not hundreds.
    assert len(after.content) < len(before.content) + 16_000, len(after.content)
