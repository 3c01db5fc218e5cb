"""A PyTorch network served as a legacy script (run warm) and as a load-once API."""

from __future__ import annotations

import csv
import itertools
import json
import urllib.request
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from heavy_helpers import TORCH_NET, manifest_apis, uncached_client
from helpers import pack_fixture, served, wait_ready

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("torch_installed")]

APIS = ("run", "predict")
TOLERANCE = 1e-5  # the model rounds to 6 decimals and computes in float32


def reference(inputs: list[str]) -> list[dict[str, float]]:
    from torch_reference import scores

    return scores(inputs)


def example_output() -> tuple[list[str], list[dict[str, float]]]:
    examples = TORCH_NET / "model" / "framework" / "examples"
    with (examples / "run_input.csv").open(newline="") as handle:
        inputs = [row[0] for row in list(csv.reader(handle))[1:]]
    with (examples / "run_output.csv").open(newline="") as handle:
        records = [{k: float(v) for k, v in row.items()} for row in csv.DictReader(handle)]
    return inputs, records


def assert_close(actual: list[Any], expected: list[dict[str, float]]) -> None:
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected):
        assert list(got) == list(want)
        for name, value in want.items():
            assert got[name] == pytest.approx(value, abs=TOLERANCE), (name, got, want)


def distinct_smiles(count: int) -> Iterator[str]:
    """Different SMILES-like strings, so every input has its own scores."""
    parts = ["C", "N", "O", "c1ccccc1", "C(=O)O", "Cl", "Br", "S", "[nH]", "#N"]
    for number in itertools.count():
        if number >= count:
            return
        yield "".join(parts[(number * 7 + k * 3) % len(parts)] for k in range(1 + number % 6)) + (
            "C" * (number // 10)
        )


@pytest.fixture(scope="module")
def bundle(packed: Callable[..., Path]) -> Path:
    return packed("torch-net")


def test_the_legacy_api_runs_warm_and_the_py_api_loads_once(bundle: Path) -> None:
    apis = manifest_apis(bundle)

    assert apis["run"]["kind"] == "sh"
    assert apis["run"]["warm_script"] == "code/main.py"
    # the pack-time check ran it warm and found it equal to the cold run
    assert apis["run"]["decided"]["warm"] is True
    assert apis["predict"]["kind"] == "py"


def test_the_example_output_matches_a_direct_computation() -> None:
    inputs, expected = example_output()

    assert_close(reference(inputs), expected)


@pytest.mark.parametrize("cold", [False, True], ids=["warm", "cold"])
def test_both_apis_answer_the_example_output(bundle: Path, cold: bool) -> None:
    inputs, expected = example_output()

    with uncached_client(bundle, workers=2, cold=cold) as client:
        wait_ready(client)
        answers = {api: client.post(f"/{api}", json=inputs) for api in APIS}

    for api, response in answers.items():
        assert response.status_code == 200, (api, response.text)
        assert_close(response.json(), expected)


def post_json(url: str, payload: Any) -> tuple[int, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        return response.status, json.loads(response.read())


def test_ersilia_serve_answers_both_apis(bundle: Path) -> None:
    inputs, expected = example_output()

    with served(bundle, "--workers", "2", startup_timeout=120) as url:
        answers = {api: post_json(f"{url}/{api}", inputs) for api in APIS}

    for status, rows in answers.values():
        assert status == 200
        assert_close(rows, expected)


def concurrent_requests(client: Any, api: str, requests: list[list[str]]) -> list[Any]:
    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(lambda inputs: client.post(f"/{api}", json=inputs), requests))


@pytest.mark.parametrize("api", APIS)
def test_twenty_concurrent_requests_each_get_their_own_scores(bundle: Path, api: str) -> None:
    smiles = list(distinct_smiles(80))
    requests = [smiles[number * 4 : number * 4 + 1 + number % 4] for number in range(20)]

    with uncached_client(bundle, workers=2, timeout=120) as client:
        wait_ready(client)
        responses = concurrent_requests(client, api, requests)

    for inputs, response in zip(requests, responses):
        assert response.status_code == 200, response.text
        assert_close(response.json(), reference(inputs))


@pytest.fixture(scope="module")
def packed_with_threads(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """torch-net packed by a caller whose environment asks numeric libraries for 2 threads."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("OMP_NUM_THREADS", "2")
        patch.setenv("MKL_NUM_THREADS", "2")
        yield pack_fixture("torch-net", tmp_path_factory.mktemp("threads"))


def test_a_caller_asking_for_threads_still_gets_warm_runs_that_answer(
    packed_with_threads: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # With 2 threads, the warm runner's parent starts torch's thread pool on its warm-up run;
    # a child forked from it hangs on its first multi-threaded operation unless the child
    # holds torch to one thread. The pack-time check would then time out and fall back to cold.
    monkeypatch.setenv("OMP_NUM_THREADS", "2")
    monkeypatch.setenv("MKL_NUM_THREADS", "2")
    smiles = list(distinct_smiles(40))
    requests = [smiles[number * 2 : number * 2 + 2] for number in range(20)]

    assert manifest_apis(packed_with_threads)["run"]["decided"]["warm"] is True
    with uncached_client(packed_with_threads, workers=2, timeout=60) as client:
        wait_ready(client)
        responses = concurrent_requests(client, "run", requests)

    for inputs, response in zip(requests, responses):
        assert response.status_code == 200, response.text
        assert_close(response.json(), reference(inputs))
