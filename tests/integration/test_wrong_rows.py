"""Every input gets its own row: never a neighbour's, another install's or another draw's.

Packed fixtures served through the generated app: ``awkward-values`` (a load-once API with NaN
inside a list, a script API that echoes its inputs), ``variable-draws`` (a fresh random draw
per row) and ``install-variants`` (the same model files installed with two factors).
"""

from __future__ import annotations

import csv
import io
import time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from helpers import app_client, copy_fixture, pack_fixture

from ersilia_pack.batch import run_batch
from ersilia_pack.pack import pack
from ersilia_pack.runtime.bundle.manifest import load_bundle


@pytest.fixture(scope="module")
def awkward(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pack_fixture("awkward-values", tmp_path_factory.mktemp("awkward"), check=False)


@pytest.fixture
def client(awkward: Path, tmp_path: Path) -> Any:
    with app_client(awkward, state_dir=tmp_path / "state") as served:
        yield served


def words(client: TestClient, response_json: list[dict[str, Any]]) -> list[Any]:
    return [row["word"] for row in response_json]


# 1. An input that cannot be one line of the model's input file


def test_a_carriage_return_is_refused_and_never_moves_rows_onto_other_inputs(
    client: TestClient,
) -> None:
    refused = client.post("/words", json=["\r", "CCCCC", "good day", "a\rb"])
    clean = client.post("/words", json=["CCCCC", "good day"])

    assert refused.status_code == 422
    assert "input 0 holds a carriage return" in refused.json()["detail"]
    assert clean.status_code == 200
    assert clean.headers["x-cached-rows"] == "0"  # nothing of the refused request was kept
    assert clean.json() == [
        {"word": "CCCCC", "score": -5.0},
        {"word": "good day", "score": -8.0},
    ]


# 4. NaN inside a list value


def test_nan_inside_a_list_is_null_in_a_reply_and_in_a_job(client: TestClient) -> None:
    reply = client.post("/run", json=["abc", "de"])
    submitted = client.post("/job/submit?api=run", json=["abc", "de"])
    job_id = submitted.json()["job_id"]
    deadline = time.monotonic() + 60
    while client.get(f"/job/status/{job_id}").json()["state"] not in ("done", "failed"):
        assert time.monotonic() < deadline, "the job did not finish"
        time.sleep(0.05)
    status = client.get(f"/job/status/{job_id}").json()
    result = client.get(f"/job/result/{job_id}")

    expected = [
        {"values": [3.0, None, [None]], "length": 3},
        {"values": [2.0, None, [None]], "length": 2},
    ]
    assert reply.status_code == 200, reply.text
    assert reply.json() == expected
    assert (status["state"], status["null_rows"]) == ("done", 0)
    assert result.json() == expected


# 8. Strings a model writes are kept as strings


def test_na_words_and_empty_strings_in_a_string_column_are_kept(client: TestClient) -> None:
    inputs = ["NA", "NULL", "N/A", "NAN", "nan", "None", ""]
    response = client.post("/words?with_meta=true", json=inputs)

    body = response.json()
    assert response.status_code == 200
    assert words(client, body["result"]) == inputs
    assert [row["score"] for row in body["result"]] == [-2.0, -4.0, -3.0, -3.0, -3.0, -4.0, -0.0]
    assert body["meta"]["failed"] == []


# 7. Bodies that are not a CSV with a header


def test_a_csv_without_a_header_is_refused_rather_than_losing_its_first_input(
    client: TestClient,
) -> None:
    headerless = client.post(
        "/words", content=b"CCO\nc1ccccc1", headers={"content-type": "text/csv"}
    )
    plain = client.post(
        "/words", content=b"CCO\nc1ccccc1\n", headers={"content-type": "text/plain"}
    )

    assert headerless.status_code == 422
    assert "add a header" in headerless.json()["detail"]
    assert plain.status_code == 200
    assert words(client, plain.json()) == ["CCO", "c1ccccc1"]


# 6 and 8. The batch command reads what the server reads, and writes cells a spreadsheet
# will not run


def test_the_batch_command_reads_a_csv_as_the_server_does_and_defuses_formulas(
    awkward: Path, client: TestClient, tmp_path: Path
) -> None:
    source = tmp_path / "library.csv"
    source.write_text('id,smiles\nm1,CCO\nm2,""\nm3, C \nm4,=1+1\nm5,@SUM(A1)\nm6,-2\n')
    output = tmp_path / "out.csv"

    summary = run_batch(
        input_path=source,
        output_path=output,
        api="words",
        repository_dir=awkward,
        workers=1,
    )
    served = client.post(
        "/words", content=source.read_bytes(), headers={"content-type": "text/csv"}
    )

    sent = ["CCO", "", " C ", "=1+1", "@SUM(A1)", "-2"]
    assert summary.total == 6
    assert words(client, served.json()) == sent
    rows = list(csv.reader(io.StringIO(output.read_text(), newline="")))
    assert rows == [
        ["input", "word", "score"],
        ["CCO", "CCO", "-3.0"],
        ["", "", "-0.0"],
        [" C ", " C ", "-3.0"],
        ["'=1+1", "'=1+1", "-4.0"],
        ["'@SUM(A1)", "'@SUM(A1)", "-8.0"],
        ["'-2", "'-2", "-2.0"],  # a string cell is defused, a negative number is not
    ]


# 5. A model whose output varies


@pytest.fixture(scope="module")
def variable(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return pack_fixture("variable-draws", tmp_path_factory.mktemp("variable"), check=False)


def test_a_variable_model_draws_once_per_input_and_keeps_nothing(
    variable: Path, tmp_path: Path
) -> None:
    with app_client(variable, state_dir=tmp_path / "state") as served:
        first = served.post("/run", json=["RAND"] * 4)
        second = served.post("/run", json=["RAND"] * 4)
        cached_only = served.post("/run?cache_only=true", json=["RAND"])

    draws = [row["draw"] for row in first.json() + second.json()]
    assert first.status_code == second.status_code == 200
    assert all(draw.startswith("RAND-") for draw in draws)
    assert len(set(draws)) == 8
    assert second.headers["x-cached-rows"] == "0"
    assert cached_only.json() == [{"draw": None}]


# 2. The same model files, installed two ways


def test_bundles_installed_differently_never_share_cached_rows(tmp_path: Path) -> None:
    bundles = []
    for variant in (None, "big"):
        model_dir = copy_fixture("install-variants", tmp_path / f"model-{variant}")
        result = pack(
            model_dir,
            backend="system",
            repository_root=tmp_path / f"repository-{variant}",
            variant=variant,
            check=False,
        )
        bundles.append(result.bundle_dir)
    plain, big = (load_bundle(bundle).manifest for bundle in bundles)
    assert plain.model_hash == big.model_hash  # the model files are the same
    assert (plain.install.source, big.install.source) == ("install.sh", "install_big.sh")

    shared = {"state_dir": tmp_path / "shared-state"}
    with app_client(bundles[0], **shared) as served:
        small = served.post("/run", json=["abc"])
    with app_client(bundles[1], **shared) as served:
        large = served.post("/run", json=["abc"])
    with app_client(bundles[0], **shared) as served:
        small_again = served.post("/run", json=["abc"])

    assert small.json() == small_again.json() == [{"scaled": 3}]
    assert large.json() == [{"scaled": 3000}]
    assert large.headers["x-cached-rows"] == "0"
    assert small_again.headers["x-cached-rows"] == "1"  # a bundle still finds its own rows
