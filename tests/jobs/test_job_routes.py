"""The job routes, in-process, with SQLite and with a real Redis: submit, follow, fetch, cancel."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from helpers import app_client
from jobkit import computed_in, wait_for, wait_runs_ended

INPUTS = ["CCO", "hello", "bad", "CCO", "abcd", "zz", "x"]


def serve(bundle: Path, **settings: object) -> TestClient:
    """The bundle's app with small job chunks; the script runs cold, so runs are countable,
    and no start-up self-check runs the example first (tests/checks covers it)."""
    return app_client(bundle, cold=True, **{"job_chunk_size": 2, "self_check": False, **settings})


def submit(client: TestClient, inputs: list[str], query: str = "", **kwargs: Any) -> str:
    response = client.post(f"/job/submit?api=run{query}", json=inputs, **kwargs)
    assert response.status_code == 202, response.text
    body = response.json()
    assert body["state"] == "queued" and body["total"] == len(inputs)
    assert response.headers["location"] == f"/job/status/{body['job_id']}"
    job_id: str = body["job_id"]
    return job_id


def finished(client: TestClient, job_id: str, **kwargs: Any) -> dict[str, Any]:
    """Poll the job's status until it is done (or failed, or cancelled)."""

    def final() -> dict[str, Any] | None:
        status: dict[str, Any] = client.get(f"/job/status/{job_id}", **kwargs).json()
        return status if status["state"] in ("done", "failed", "cancelled") else None

    return wait_for(final, within=60, what=f"job {job_id} to finish")


def test_a_job_returns_what_post_run_returns_in_every_orient(
    bundle: Path, store_settings: dict[str, str]
) -> None:
    with serve(bundle, **store_settings) as client:
        job_id = submit(client, INPUTS)
        status = finished(client, job_id)
        for orient in ("records", "split", "columns", "index", "values"):
            job_rows = client.get(f"/job/result/{job_id}?orient={orient}")
            direct = client.post(f"/run?orient={orient}&fetch_cache=false", json=INPUTS)

            assert job_rows.status_code == 200
            assert job_rows.headers["content-type"] == "application/json"
            assert job_rows.json() == direct.json(), orient

    assert status["state"] == "done" and status["error"] is None
    assert (status["done"], status["total"], status["null_rows"]) == (7, 7, 1)
    assert (status["chunks"], status["chunks_processed"]) == (4, 4)
    assert status["computed_rows"] + status["cached_rows"] == 7


def test_a_job_result_comes_as_csv_on_request(bundle: Path, store_settings: dict[str, str]) -> None:
    with serve(bundle, **store_settings) as client:
        job_id = submit(client, INPUTS)
        finished(client, job_id)
        by_query = client.get(f"/job/result/{job_id}?format=csv")
        by_accept = client.get(f"/job/result/{job_id}", headers={"Accept": "text/csv"})

    assert by_query.status_code == 200
    assert by_query.headers["content-type"].startswith("text/csv")
    assert "attachment" in by_query.headers["content-disposition"]
    assert by_accept.text == by_query.text
    rows = list(csv.reader(io.StringIO(by_query.text)))
    assert rows[0] == ["input", "length", "upper"]
    assert rows[1:] == [
        ["CCO", "3", "CCO"],
        ["hello", "5", "HELLO"],
        ["bad", "", ""],
        ["CCO", "3", "CCO"],
        ["abcd", "4", "ABCD"],
        ["zz", "2", "ZZ"],
        ["x", "1", "X"],
    ]


def test_a_job_takes_a_csv_upload_like_post_run(
    bundle: Path, store_settings: dict[str, str]
) -> None:
    with serve(bundle, **store_settings) as client:
        plain = client.post(
            "/job/submit", content="smiles\nCCO\nzz\n", headers={"Content-Type": "text/csv"}
        )
        upload = client.post(
            "/job/submit?api=run", files={"file": ("inputs.csv", "input\nhello\n", "text/csv")}
        )
        assert plain.status_code == upload.status_code == 202
        finished(client, plain.json()["job_id"])
        finished(client, upload.json()["job_id"])
        first = client.get(f"/job/result/{plain.json()['job_id']}").json()
        second = client.get(f"/job/result/{upload.json()['job_id']}").json()

    assert first == [{"length": 3, "upper": "CCO"}, {"length": 2, "upper": "ZZ"}]
    assert second == [{"length": 5, "upper": "HELLO"}]


def test_the_result_of_an_unfinished_job_is_a_409_that_says_why(
    bundle: Path, store_settings: dict[str, str], gate: Path
) -> None:
    with serve(bundle, **store_settings) as client:
        job_id = submit(client, INPUTS)
        running = wait_for(
            lambda: client.get(f"/job/status/{job_id}").json()["state"] == "running" or None,
            within=30,
            what="the job to start",
        )
        early = client.get(f"/job/result/{job_id}")
        gate.touch()
        status = finished(client, job_id)
        late = client.get(f"/job/result/{job_id}")

    assert running
    assert early.status_code == 409
    assert f"job {job_id} is running" in early.json()["detail"]
    assert f"GET /job/status/{job_id}" in early.json()["detail"]
    assert status["state"] == "done"
    assert late.status_code == 200 and len(late.json()) == len(INPUTS)


def test_unknown_jobs_are_404_on_every_route(bundle: Path, store_settings: dict[str, str]) -> None:
    with serve(bundle, **store_settings) as client:
        answers = [
            client.get("/job/status/0123456789abcdef"),
            client.get("/job/result/0123456789abcdef"),
            client.delete("/job/0123456789abcdef"),
        ]

    for response in answers:
        assert response.status_code == 404
        assert "job '0123456789abcdef' not found" in response.json()["detail"]


def test_submitting_to_an_api_the_model_lacks_is_a_422_naming_the_apis(
    bundle: Path, store_settings: dict[str, str]
) -> None:
    with serve(bundle, **store_settings) as client:
        response = client.post("/job/submit?api=nope", json=["CCO"])
        empty = client.post("/job/submit", json=[])

    assert response.status_code == 422
    assert response.json()["detail"] == "api 'nope' is not an API of jobs-counter: use one of run"
    assert empty.status_code == 422


def test_deleting_a_running_job_cancels_it_and_removes_its_data(
    bundle: Path, store_settings: dict[str, str], gate: Path
) -> None:
    with serve(bundle, **store_settings) as client:
        job_id = submit(client, INPUTS)
        wait_for(
            lambda: client.get(f"/job/status/{job_id}").json()["state"] == "running" or None,
            within=30,
            what="the job to start",
        )
        cancelled = client.delete(f"/job/{job_id}")
        status = client.get(f"/job/status/{job_id}").json()
        result = client.get(f"/job/result/{job_id}")
        store = client.app.state.jobs.store  # type: ignore[attr-defined]
        left = [store.chunk_inputs(job_id, 0), store.finished_chunks(job_id)]
        gate.touch()
        wait_runs_ended(bundle)  # the cancelled job's last run ends, unsaved
        after = client.get(f"/job/status/{job_id}").json()
        removed = client.delete(f"/job/{job_id}")
        gone = client.get(f"/job/status/{job_id}")

    assert cancelled.status_code == 200
    assert cancelled.json() == {"job_id": job_id, "state": "cancelled"}
    assert status["state"] == "cancelled"
    assert result.status_code == 409 and "cancelled" in result.json()["detail"]
    assert left == [None, set()]
    assert after["state"] == "cancelled" and after["done"] == 0
    assert removed.json() == {"job_id": job_id, "state": "deleted"}
    assert gone.status_code == 404


def test_a_job_computes_only_what_the_cache_lacks_and_cache_only_computes_nothing(
    bundle: Path, store_settings: dict[str, str], counter: Path
) -> None:
    with serve(bundle, **store_settings) as client:
        client.post("/run", json=["CCO", "hello"])
        job_id = submit(client, ["hello", "zz", "CCO", "abcd"])
        status = finished(client, job_id)
        rows = client.get(f"/job/result/{job_id}").json()
        computed = computed_in(counter)
        only = submit(client, ["CCO", "nothing"], "&cache_only=true")
        only_status = finished(client, only)
        only_rows = client.get(f"/job/result/{only}").json()

    assert [row["upper"] for row in rows] == ["HELLO", "ZZ", "CCO", "ABCD"]
    assert (status["cached_rows"], status["computed_rows"]) == (2, 2)
    assert computed == 4  # "CCO" and "hello" by the POST, then only "zz" and "abcd"
    assert computed_in(counter) == computed
    assert only_rows == [{"length": 3, "upper": "CCO"}, {"length": None, "upper": None}]
    assert (only_status["cached_rows"], only_status["computed_rows"]) == (1, 0)
    assert only_status["null_rows"] == 1


def test_jobs_survive_a_restart_and_expire_after_their_time(
    bundle: Path, store_settings: dict[str, str]
) -> None:
    with serve(bundle, **store_settings) as client:
        job_id = submit(client, INPUTS)
        finished(client, job_id)
    with serve(bundle, **store_settings) as client:
        kept = client.get(f"/job/result/{job_id}")
    # A time to live of a few milliseconds: the job is older than that at the next start.
    with serve(bundle, job_ttl_hours=1e-6, **store_settings) as client:
        expired = client.get(f"/job/status/{job_id}")
        store = client.app.state.jobs.store  # type: ignore[attr-defined]
        left = [store.chunk_inputs(job_id, 0), store.read_chunk(job_id, 0)]

    assert kept.status_code == 200 and len(kept.json()) == len(INPUTS)
    assert expired.status_code == 404
    assert left == [None, None]


@pytest.mark.parametrize("route", ["status", "result", "delete"])
def test_a_job_is_visible_only_to_the_api_key_that_submitted_it(
    bundle: Path, store_settings: dict[str, str], route: str
) -> None:
    alice = {"Authorization": "Bearer alice-key-1"}
    bob = {"Authorization": "Bearer bob-key-22"}
    with serve(bundle, api_key="alice-key-1,bob-key-22", **store_settings) as client:
        job_id = submit(client, INPUTS, headers=alice)
        finished(client, job_id, headers=alice)
        path = f"/job/{job_id}" if route == "delete" else f"/job/{route}/{job_id}"
        method = client.delete if route == "delete" else client.get
        to_bob = method(path, headers=bob)
        to_nobody = method(path)
        to_alice = method(path, headers=alice)

    assert to_bob.status_code == 404
    assert to_bob.json()["detail"] == f"job {job_id!r} not found: it never existed, or expired"
    assert to_nobody.status_code == 401
    assert to_alice.status_code == 200


def test_a_job_of_a_broken_model_fails_and_says_why(
    bundle: Path, store_settings: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JOBS_TEST_BROKEN", "1")
    with serve(bundle, **store_settings) as client:
        job_id = submit(client, INPUTS)
        status = finished(client, job_id)
        result = client.get(f"/job/result/{job_id}")
        wait_runs_ended(bundle)  # the failed job's other chunk may still be running

    assert status["state"] == "failed"
    assert status["error"] == "run exited with code 1: the model is broken"
    assert result.status_code == 409
    assert result.json()["detail"] == (
        f"job {job_id} failed, so it has no result: run exited with code 1: the model is broken"
    )
