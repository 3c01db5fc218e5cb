"""A chunk the model fails on is tried again; one that keeps failing gets null rows, not a
failed job, while the model still answers its example input (in-process, both stores)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from helpers import app_client
from jobkit import wait_for, wait_runs_ended


def serve(bundle: Path, **settings: object) -> TestClient:
    return app_client(bundle, cold=True, **{"job_chunk_size": 2, **settings})


def finished(client: TestClient, job_id: str) -> dict[str, Any]:
    def final() -> dict[str, Any] | None:
        status: dict[str, Any] = client.get(f"/job/status/{job_id}").json()
        return status if status["state"] in ("done", "failed", "cancelled") else None

    return wait_for(final, within=120, what=f"job {job_id} to finish")


def test_a_chunk_the_model_fails_on_for_a_while_is_tried_again_and_the_job_is_done(
    bundle: Path, store_settings: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    failures = tmp_path / "failures"
    # The chunk's run fails, then the engine's run of the example input: a model failure.
    failures.write_text("2")
    monkeypatch.setenv("JOBS_TEST_FAILURES", str(failures))
    with serve(bundle, job_chunk_size=4, **store_settings) as client:
        job_id = client.post("/job/submit", json=["CCO", "hello", "zz", "x"]).json()["job_id"]
        status = finished(client, job_id)
        rows = client.get(f"/job/result/{job_id}").json()

    assert failures.read_text() == "0"
    assert status["state"] == "done" and status["error"] is None, status
    assert (status["chunks"], status["chunks_processed"], status["null_rows"]) == (1, 1, 0)
    assert rows == [
        {"length": 3, "upper": "CCO"},
        {"length": 5, "upper": "HELLO"},
        {"length": 2, "upper": "ZZ"},
        {"length": 1, "upper": "X"},
    ]


def test_a_chunk_whose_every_input_times_out_gets_null_rows_with_the_reason_and_the_job_is_done(
    bundle: Path, store_settings: dict[str, str]
) -> None:
    settings = {"timeout": 1.0, "job_chunk_retries": 1, **store_settings}
    with serve(bundle, **settings) as client:
        job_id = client.post("/job/submit", json=["CCO", "hello", "hang-1", "hang-2"]).json()[
            "job_id"
        ]
        status = finished(client, job_id)
        rows = client.get(f"/job/result/{job_id}").json()
        store = client.app.state.jobs.store  # type: ignore[attr-defined]
        reasons = store.read_chunk(job_id, 1).errors
        wait_runs_ended(bundle)

    assert status["state"] == "done" and status["error"] is None, status
    assert (status["done"], status["null_rows"], status["chunks_processed"]) == (4, 2, 2)
    assert rows == [
        {"length": 3, "upper": "CCO"},
        {"length": 5, "upper": "HELLO"},
        {"length": None, "upper": None},
        {"length": None, "upper": None},
    ]
    assert reasons == {0: "run did not finish within 1 s", 1: "run did not finish within 1 s"}
