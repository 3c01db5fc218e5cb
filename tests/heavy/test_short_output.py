"""A model that exits 0 but writes no row for a bad input: rows never shift onto other inputs."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from heavy_helpers import manifest_apis, uncached_client
from helpers import wait_ready

pytestmark = pytest.mark.slow


def expected(inputs: list[str]) -> list[dict[str, Any]]:
    return [
        {"echo": None, "length": None} if "!" in text else {"echo": text, "length": len(text)}
        for text in inputs
    ]


@pytest.fixture(scope="module")
def bundle(packed: Callable[..., Path]) -> Path:
    return packed("skips-bad-input")


def test_the_legacy_api_runs_warm(bundle: Path) -> None:
    assert manifest_apis(bundle)["run"]["decided"]["warm"] is True


@pytest.mark.parametrize(
    ("api", "cold"),
    [("run", False), ("run", True), ("predict", False)],
    ids=["legacy-warm", "legacy-cold", "load-once"],
)
def test_a_skipped_input_gets_a_null_row_and_every_other_input_its_own(
    bundle: Path, api: str, cold: bool
) -> None:
    inputs = ["CCO", "BAD!", "c1ccccc1", "N", "x!y", "CCN", "CCCC"]

    with uncached_client(bundle, workers=2, cold=cold) as client:
        wait_ready(client)
        response = client.post(f"/{api}?with_meta=true", json=inputs)

    assert response.status_code == 200, response.text
    body = response.json()
    assert body["result"] == expected(inputs)
    failed = sorted((entry["index"], entry["input"]) for entry in body["meta"]["failed"])
    assert failed == [(1, "BAD!"), (4, "x!y")]
    if api == "run":
        reasons = {entry["reason"] for entry in body["meta"]["failed"]}
        assert reasons == {"the model wrote 0 rows for 1 inputs"}


@pytest.mark.parametrize("api", ["run", "predict"])
def test_twenty_concurrent_requests_with_skipped_inputs_each_get_their_own_rows(
    bundle: Path, api: str
) -> None:
    requests = [
        [f"r{number}a", "shared"]
        + (["skip!" + str(number % 3)] if number % 3 == 0 else [])
        + ["r" + "b" * number]
        for number in range(20)
    ]

    with uncached_client(bundle, workers=2) as client, ThreadPoolExecutor(20) as pool:
        wait_ready(client)
        responses = list(pool.map(lambda inputs: client.post(f"/{api}", json=inputs), requests))

    for inputs, response in zip(requests, responses):
        assert response.status_code == 200, response.text
        assert response.json() == expected(inputs)
