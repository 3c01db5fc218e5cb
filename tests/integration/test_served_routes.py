"""A packed healthy model served in-process: its API, shared routes, docs and bad requests."""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from helpers import app_client, wait_ready

EXAMPLE_INPUT = ["CCO", "c1ccccc1", "hello world"]
EXAMPLE_OUTPUT = [
    {"length": 3, "upper": "CCO", "vowel_ratio": 0.3333333333333333},
    {"length": 8, "upper": "C1CCCCC1", "vowel_ratio": 0.0},
    {"length": 11, "upper": "HELLO WORLD", "vowel_ratio": 0.2727272727272727},
]


@pytest.fixture
def bundle(packed: Callable[..., Path]) -> Path:
    return packed("stdlib-simple")


@pytest.fixture
def client(bundle: Path) -> Iterator[TestClient]:
    with app_client(bundle) as test_client:
        yield test_client


def test_run_on_the_example_input_gives_the_example_output_typed(client: TestClient) -> None:
    response = client.post("/run", json=EXAMPLE_INPUT)

    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-failed-rows"] == "0"
    assert response.json() == EXAMPLE_OUTPUT
    # typed per column, not strings: 0.0 stays a float, lengths are ints
    first = response.json()[1]
    assert type(first["length"]) is int and type(first["vowel_ratio"]) is float


def test_rows_follow_the_input_order_and_keep_duplicates(client: TestClient) -> None:
    inputs = ["hello world", "CCO", "hello world", "a"]

    rows = client.post("/run", json=inputs).json()

    assert [row["upper"] for row in rows] == ["HELLO WORLD", "CCO", "HELLO WORLD", "A"]
    assert rows[3] == {"length": 1, "upper": "A", "vowel_ratio": 1.0}


def test_empty_string_input_keeps_the_empty_string_and_nulls_empty_numbers(
    client: TestClient,
) -> None:
    rows = client.post("/run", json=["", "CCO"]).json()

    # The upper-case of "" is "" (a string column keeps it); an empty number cell is null.
    assert rows == [{"length": 0, "upper": "", "vowel_ratio": None}, EXAMPLE_OUTPUT[0]]


@pytest.mark.parametrize(
    ("orient", "expected"),
    [
        (
            "split",
            {
                "columns": ["length", "upper", "vowel_ratio"],
                "index": [0, 1],
                "data": [[3, "CCO", 0.3333333333333333], [3, "CCO", 0.3333333333333333]],
            },
        ),
        (
            "columns",
            {
                "length": {"0": 3, "1": 3},
                "upper": {"0": "CCO", "1": "CCO"},
                "vowel_ratio": {"0": 0.3333333333333333, "1": 0.3333333333333333},
            },
        ),
        ("index", {"0": EXAMPLE_OUTPUT[0], "1": EXAMPLE_OUTPUT[0]}),
        ("values", [[3, "CCO", 0.3333333333333333], [3, "CCO", 0.3333333333333333]]),
        ("records", [EXAMPLE_OUTPUT[0], EXAMPLE_OUTPUT[0]]),
    ],
)
def test_orients_keep_duplicate_inputs_as_separate_rows(
    client: TestClient, orient: str, expected: Any
) -> None:
    response = client.post(f"/run?orient={orient}", json=["CCO", "CCO"])

    assert response.status_code == 200
    assert response.json() == expected


def test_an_unknown_orient_is_422(client: TestClient) -> None:
    response = client.post("/run?orient=table", json=["CCO"])

    assert response.status_code == 422
    assert "records" in json.dumps(response.json()["detail"])


@pytest.mark.parametrize("flag", ["true", "false", "True", "False", "1", "0"])
def test_cache_flags_are_accepted_as_booleans(client: TestClient, flag: str) -> None:
    response = client.post(
        f"/run?fetch_cache={flag}&save_cache={flag}&cache_only=false", json=["CCO"]
    )

    assert response.status_code == 200
    assert response.json() == [EXAMPLE_OUTPUT[0]]


def test_key_and_input_objects_csv_and_multipart_uploads(client: TestClient) -> None:
    objects = [{"key": "k1", "input": "CCO", "note": "ignored"}, {"key": "k2", "input": "a"}]
    csv_text = "smiles\nCCO\na\n"

    answers = [
        client.post("/run", json=objects),
        client.post("/run", content=csv_text, headers={"content-type": "text/csv"}),
        client.post("/run", files={"file": ("inputs.csv", csv_text.encode(), "text/csv")}),
    ]

    for response in answers:
        assert response.status_code == 200, response.text
        assert [row["upper"] for row in response.json()] == ["CCO", "A"]


@pytest.mark.parametrize(
    ("body", "words"),
    [
        ({"inputs": ["CCO"]}, "must be a JSON list of inputs"),
        ([], "empty list"),
        (["CCO", 3], "item 1 is 3"),
        ([{"key": "k1"}], "'input' string"),
    ],
)
def test_bodies_that_are_not_lists_of_strings_are_422(
    client: TestClient, body: Any, words: str
) -> None:
    response = client.post("/run", json=body)

    assert response.status_code == 422
    assert words in response.json()["detail"]


def test_an_empty_body_is_422(client: TestClient) -> None:
    response = client.post("/run", content=b"", headers={"content-type": "application/json"})

    assert response.status_code == 422
    assert "the body is empty" in response.json()["detail"]


def test_broken_json_is_400_and_an_unknown_content_type_415(client: TestClient) -> None:
    broken = client.post("/run", content=b'["CCO"', headers={"content-type": "application/json"})
    xml = client.post("/run", content=b"<a/>", headers={"content-type": "application/xml"})

    assert broken.status_code == 400
    assert "not valid JSON" in broken.json()["detail"]
    assert xml.status_code == 415
    assert "not supported" in xml.json()["detail"]


def test_root_names_the_model(client: TestClient) -> None:
    response = client.get("/")

    assert response.status_code == 200
    assert response.json() == {"stdlib-simple": "string-features"}


def test_info_answers_get_post_and_head(client: TestClient) -> None:
    answers = [
        client.get("/info"),
        client.post("/info", json={}),
        client.post("/info", content=b""),
    ]

    for response in answers:
        assert response.status_code == 200
        info = response.json()
        assert info["model_id"] == "stdlib-simple"
        assert info["Slug"] == "string-features"
        assert info["api_list"] == ["run"]
        assert info["card"]["Title"].startswith("String features")
        schema = info["api_schema"]["run"]["output"]["outcome"]
        assert schema == {
            "type": "mixed_array",
            "shape": [3],
            "meta": ["length", "upper", "vowel_ratio"],
        }
    assert answers[0].json() == answers[1].json() == answers[2].json()
    head = client.head("/info")
    assert head.status_code == 200
    assert head.content == b""


def test_card_and_its_fields(client: TestClient) -> None:
    card = client.get("/card").json()

    assert card["Identifier"] == "stdlib-simple"
    # YAML's number and date stay readable
    assert card["Publication Year"] == 2024
    assert card["Incorporation Date"] == "2024-05-01"
    assert client.get("/card/Publication Year").json() == 2024
    assert client.get("/card/Output").json() == ["Value"]


def test_a_missing_card_field_is_404_naming_it(client: TestClient) -> None:
    response = client.get("/card/Weight Units")

    assert response.status_code == 404
    assert "'Weight Units'" in response.json()["detail"]


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert wait_ready(client) == {
        "ready": True,
        "apis": {"run": True},
        "checks": {"run": {"ready": True, "check": "passed", "mode": "warm", "device": "cpu"}},
    }


def test_example_and_column_routes(client: TestClient) -> None:
    assert client.get("/run/example/input").json() == EXAMPLE_INPUT
    assert client.get("/run/example/output").json() == EXAMPLE_OUTPUT
    assert client.get("/run/columns/input").json() == [
        {"name": "input", "type": "string", "description": "one input per row"}
    ]
    assert client.get("/run/columns/output").json() == [
        {
            "name": "length",
            "type": "integer",
            "direction": "",
            "description": "Number of characters",
        },
        {
            "name": "upper",
            "type": "string",
            "direction": "",
            "description": "The input in upper case",
        },
        {
            "name": "vowel_ratio",
            "type": "float",
            "direction": "high",
            "description": "Fraction of characters that are vowels",
        },
    ]


def test_an_unknown_api_is_404(client: TestClient) -> None:
    assert client.post("/predict", json=["CCO"]).status_code == 404


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_pages_use_only_local_assets(client: TestClient, page: str) -> None:
    response = client.get(page)

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    assert re.findall(r"https?://", html) == []
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert assets, html
    for asset in assets:
        assert asset.startswith("/static/"), asset
        served = client.get(asset)
        assert served.status_code == 200, asset
        assert len(served.content) > 100, asset
    assert "/openapi.json" in html


def test_openapi_documents_the_examples_and_typed_columns(client: TestClient) -> None:
    response = client.get("/openapi.json")

    assert response.status_code == 200
    document = response.json()
    post = document["paths"]["/run"]["post"]
    assert post["requestBody"]["content"]["application/json"]["example"] == EXAMPLE_INPUT
    assert post["responses"]["200"]["content"]["application/json"]["example"] == EXAMPLE_OUTPUT
    schema = json.dumps(post["responses"]["200"]["content"]["application/json"]["schema"])
    assert "#/components/schemas/RunRow" in schema
    row = document["components"]["schemas"]["RunRow"]
    types = {name: spec["anyOf"][0]["type"] for name, spec in row["properties"].items()}
    assert types == {"length": "integer", "upper": "string", "vowel_ratio": "number"}
    assert row["properties"]["length"]["description"] == "Number of characters"
    ids = [op["operationId"] for path in document["paths"].values() for op in path.values()]
    assert len(ids) == len(set(ids)), ids


def test_errors_carry_a_request_id(client: TestClient) -> None:
    response = client.post("/run", json={}, headers={"x-request-id": "req-42"})

    assert response.status_code == 422
    assert response.headers["x-request-id"] == "req-42"
