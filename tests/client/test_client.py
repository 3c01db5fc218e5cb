"""ersilia_pack.client against real served models (ersilia_serve as a process)."""

from __future__ import annotations

import csv
import itertools
import math
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from clientkit import free_port, fresh_copy
from helpers import DATA, served
from rdkit import Chem
from rdkit.Chem import Descriptors

from ersilia_pack.client import (
    AuthError,
    Client,
    ConnectionFailed,
    JobStatus,
    MissingDependency,
    ModelError,
    NotFound,
    RequestError,
    Results,
)

pytestmark = pytest.mark.slow


def weight(smiles: str) -> float:
    return float(Descriptors.MolWt(Chem.MolFromSmiles(smiles)))


def data_rows(count: int) -> tuple[list[str], list[float]]:
    with DATA.open(newline="") as handle:
        rows = list(csv.DictReader(handle))[:count]
    return [row["input"] for row in rows], [float(row["mol_weight"]) for row in rows]


@pytest.fixture
def client(demo_url: str) -> Iterator[Client]:
    with Client(demo_url) as client:
        yield client


def test_info_names_the_model_and_its_apis(client: Client) -> None:
    info = client.info()

    assert info["model_id"] == "eos-demo"
    assert sorted(client.apis()) == ["esol", "run"]
    assert client.columns("run")[0] == "mol_weight"
    client.wait_ready(timeout=60)
    assert client.ready()


def test_run_gives_one_row_per_input_in_order_and_the_reason_of_a_null_row(
    client: Client,
) -> None:
    inputs = ["c1ccccc1", "not a molecule", "CCO", "c1ccccc1"]

    rows = client.run(inputs)

    assert isinstance(rows, Results)
    assert len(rows) == 4
    assert rows[1] is None
    assert set(rows.errors) == {1}
    assert rows.errors[1]
    assert rows.reasons == [None, rows.errors[1], None, None]
    for i in (0, 2, 3):
        row = rows[i]
        assert row is not None
        assert math.isclose(row["mol_weight"], weight(inputs[i]), rel_tol=1e-6)
    assert rows[0] == rows[3]
    assert list(rows[0] or {}) == rows.columns
    assert rows.inputs == inputs


def test_another_api_and_an_unknown_one(client: Client) -> None:
    rows = client.run(["CCO"], api="esol")
    assert rows[0] is not None and set(rows[0]) == set(client.columns("esol"))

    with pytest.raises(NotFound) as caught:
        client.run(["CCO"], api="no-such-api")
    assert caught.value.status == 404
    assert "/no-such-api" in str(caught.value)


def test_run_as_a_data_frame(client: Client) -> None:
    frame = client.run(["CCO", "not a molecule"], as_frame=True)

    assert list(frame.columns) == ["input", *client.columns("run")]
    assert list(frame["input"]) == ["CCO", "not a molecule"]
    assert math.isclose(frame["mol_weight"][0], weight("CCO"), rel_tol=1e-6)
    assert math.isnan(frame["mol_weight"][1])
    again = client.run(["CCO"]).to_pandas()
    assert again["mol_weight"][0] == frame["mol_weight"][0]


def test_a_data_frame_without_pandas_says_how_to_get_it(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "pandas", None)  # import pandas now fails

    with pytest.raises(MissingDependency, match="pip install pandas"):
        client.run(["CCO"], as_frame=True)
    rows = client.run(["CCO"])
    with pytest.raises(MissingDependency, match="pip install pandas"):
        rows.to_pandas()


def test_a_job_is_submitted_followed_and_its_rows_streamed(client: Client) -> None:
    inputs, weights = data_rows(3000)
    seen: list[JobStatus] = []

    job = client.submit(inputs)
    final = job.wait(progress=seen.append, poll=0.2)
    rows = job.result()

    assert final.state == "done"
    assert final.done == final.total == len(inputs)
    assert seen and seen[-1] == final
    assert all(a.done <= b.done for a, b in itertools.pairwise(seen))
    assert len(rows) == len(inputs)
    wrong = [
        i
        for i, (row, expected) in enumerate(zip(rows, weights))
        if row is None or not math.isclose(row["mol_weight"], expected, rel_tol=1e-4)
    ]
    assert wrong == []
    assert rows[:20] == list(client.run(inputs[:20]))
    streamed = job.iter_result()
    assert next(streamed) == rows[0]
    streamed.close()
    frame = job.result(as_frame=True)
    assert list(frame["input"]) == inputs
    assert client.job(job.id).status().state == "done"
    assert job.cancel() == "deleted"
    with pytest.raises(NotFound, match=job.id):
        job.status()


def test_a_null_row_of_a_job_is_none(client: Client) -> None:
    rows = client.submit(["CCO", "not a molecule"]).result()

    assert rows[0] is not None
    assert rows[1] is None
    assert set(rows.errors) == {1}


@pytest.fixture(scope="module")
def small_limits(counting_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The counting model served with small limits and an API key."""
    repository = fresh_copy(counting_bundle, tmp_path_factory.mktemp("limits"))
    with served(
        repository, "--max-inputs", "7", "--max-input-length", "30", "--api-key", "sesame"
    ) as url:
        yield url


def test_big_lists_go_in_batches_under_the_servers_limit(small_limits: str) -> None:
    inputs = [f"item-{i}" for i in range(25)]

    with Client(small_limits, api_key="sesame") as client:
        found = client.run(inputs)  # 25 inputs, then 12, then 6 per request
        given = client.run(inputs, batch_size=4)

    expected = [{"length": len(text), "upper": text.upper()} for text in inputs]
    assert list(found) == expected
    assert list(given) == expected


def test_a_missing_or_wrong_key_is_an_auth_error(small_limits: str) -> None:
    with Client(small_limits) as client, pytest.raises(AuthError) as missing:
        client.run(["abc"])
    with Client(small_limits, api_key="wrong") as client, pytest.raises(AuthError) as wrong:
        client.submit(["abc"])

    assert missing.value.status == wrong.value.status == 401
    assert "api_key" in str(missing.value)
    assert missing.value.exit_code == 1


def test_a_refused_input_is_a_request_error_naming_it(small_limits: str) -> None:
    with Client(small_limits, api_key="sesame") as client, pytest.raises(RequestError) as caught:
        client.run(["fine", "x" * 31])

    assert caught.value.status == 422
    assert "input 1" in str(caught.value)
    assert "30" in str(caught.value)


def test_a_model_failing_on_every_try_ends_in_a_model_error(
    counting_repository: Path, client_log: list[str]
) -> None:
    with (
        # without the start-up self-check, which would hold the broken API back with a 503
        served(
            counting_repository, "--cold", "--no-self-check", env={"CLIENT_TEST_BROKEN": "1"}
        ) as url,
        Client(url, retries=3, backoff=0.01) as client,
        pytest.raises(ModelError) as caught,
    ):
        client.run(["abc"])

    assert caught.value.status == 502
    assert "the model failed" in str(caught.value)
    assert "the model is broken" in str(caught.value)
    assert sum("answered 502, trying again" in line for line in client_log) == 2


def test_an_unreachable_server_is_a_connection_error_after_the_retries(
    client_log: list[str],
) -> None:
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens on it

    with Client(url, retries=2, backoff=0.01) as client, pytest.raises(ConnectionFailed) as caught:
        client.info()

    assert f"{url}/info failed after 2 tries" in str(caught.value)
    assert caught.value.status is None
    assert sum("ConnectError, trying again" in line for line in client_log) == 1
