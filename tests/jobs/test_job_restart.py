"""A 50k-molecule job on the real demo model survives ``kill -9`` of its server (SQLite store)."""

from __future__ import annotations

import math
from pathlib import Path

from helpers import wait_until_gone
from jobkit import (
    CHUNK,
    ENV,
    OPTIONS,
    Server,
    check_result,
    final,
    progress,
    read_data,
    wait_for,
)


def test_a_job_killed_mid_run_resumes_on_restart_and_computes_each_chunk_once(
    demo_repository: Path,
) -> None:
    inputs, weights = read_data()
    chunks = math.ceil(len(inputs) / CHUNK)
    with Server(demo_repository, *OPTIONS, env=ENV) as first:
        submitted = first.post("/job/submit?api=run", json=inputs)
        job_id = submitted.json()["job_id"]
        before = wait_for(
            lambda: progress(first, job_id, at_least=4 * CHUNK), within=240, what="4 chunks"
        )
        first.kill()

    assert submitted.status_code == 202
    assert before["state"] == "running"
    assert 4 * CHUNK <= before["done"] < len(inputs)

    with Server(demo_repository, *OPTIONS, env=ENV) as second:
        status = wait_for(lambda: final(second, job_id), within=300, what="the job to finish")
        check_result(second, job_id, inputs, weights)

    assert status["state"] == "done", status
    assert status["done"] == status["total"] == len(inputs)
    # Each chunk was recorded once: none finished before the kill was run again.
    assert status["chunks"] == status["chunks_processed"] == chunks
    assert status["computed_rows"] + status["cached_rows"] == len(inputs)
    assert wait_until_gone(str(demo_repository)) == []
