"""Jobs across a rolling upgrade on one Redis: the servers of a repack finish the old
version's jobs when they compute the same model (the same model hash), and fail them, saying
why, when they do not; a client never waits for ever on a job that makes no progress."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
from jobkit import Server, final, wait_for

from ersilia_pack.client import Client, JobError

INPUTS = [f"in{i}" for i in range(16)]  # eight chunks of two


def _env(redis_url: str) -> dict[str, str]:
    return {
        "ERSILIA_PACK_REDIS_URL": redis_url,
        "ERSILIA_PACK_JOB_CHUNK_SIZE": "2",
        "ERSILIA_PACK_JOB_CLAIM_SECONDS": "2",
    }


def _copy(bundle: Path, root: Path) -> Path:
    """A repository folder holding a copy of ``bundle`` with no state: another bundle."""
    shutil.copytree(bundle, root / bundle.name, ignore=shutil.ignore_patterns("state"))
    return root


def _running_then_killed(repository: Path, env: dict[str, str]) -> str:
    """Submit a job to a server of ``repository``, see it running, kill the server (kill -9);
    the job's id."""
    with Server(repository, "--workers", "2", env=env) as old:
        job_id = old.post("/job/submit?api=run", json=INPUTS).json()["job_id"]
        wait_for(
            lambda: old.status(job_id)["state"] == "running" or None,
            within=60,
            what="the job to run",
        )
        old.kill()
    return job_id


def test_a_repack_of_the_same_model_finishes_the_old_versions_job(
    counting_packed: Path, tmp_path: Path, redis_url: str, gate: Path
) -> None:
    env = _env(redis_url)
    job_id = _running_then_killed(_copy(counting_packed, tmp_path / "old"), env)
    gate.touch()
    with Server(_copy(counting_packed, tmp_path / "new"), "--workers", "2", env=env) as new:
        status = wait_for(lambda: final(new, job_id), within=60, what="the job to finish")
        rows = new.get(f"/job/result/{job_id}").json()

    assert status["state"] == "done", status
    assert rows == [{"length": len(text), "upper": text.upper()} for text in INPUTS]


def test_a_repack_of_a_changed_model_fails_the_old_versions_job_saying_why(
    counting_packed: Path,
    pack_counting: Callable[..., Path],
    redis_url: str,
    gate: Path,
    tmp_path: Path,
) -> None:
    env = _env(redis_url)
    changed = pack_counting(Description="The same fixture, changed, so another model hash.")
    job_id = _running_then_killed(_copy(counting_packed, tmp_path / "old"), env)
    with Server(changed.parent, "--workers", "2", env=env) as new:
        status = wait_for(lambda: final(new, job_id), within=60, what="the job to fail")
        with Client(new.url) as client, pytest.raises(JobError) as failed:
            client.job(job_id).wait(poll=0.1)
        result = new.get(f"/job/result/{job_id}")

    assert status["state"] == "failed", status
    assert "the model version that owned this job" in status["error"]
    assert "is no longer served" in status["error"]
    assert "submit the inputs again" in str(failed.value)
    assert result.status_code == 409


def test_waiting_on_a_job_that_makes_no_progress_gives_up_and_says_what_to_do(
    bundle: Path, gate: Path
) -> None:
    with Server(bundle.parent, "--workers", "2") as server, Client(server.url) as client:
        job = client.submit(INPUTS)
        with pytest.raises(TimeoutError) as stalled:
            job.wait(poll=0.1, stall=1.0)

    message = str(stalled.value)
    assert f"job {job.id} made no progress for 1 s" in message
    assert "submit the inputs again" in message and "follow it again" in message
