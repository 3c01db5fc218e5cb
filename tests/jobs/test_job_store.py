"""Both stores, driven directly and through a served app: leases, chunks, takeover."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import app_client
from jobkit import wait_for

from ersilia_pack.runtime.bundle.manifest import load_bundle
from ersilia_pack.runtime.settings import ServeSettings
from ersilia_pack.runtime.state.jobs import holder_is_dead, host_key
from ersilia_pack.runtime.state.store import ChunkResult, JobRecord, Store, open_store

ELSEWHERE = "another-host/4242/0a0b0c0d"  # a replica on another machine: never judged dead


def record(job_id: str, model_hash: str, chunks: int = 2, state: str = "queued") -> JobRecord:
    now = time.time()
    return JobRecord(
        id=job_id,
        api="run",
        owner="",
        model_hash=model_hash,
        state=state,
        total=2 * chunks,
        chunk_size=2,
        chunks=chunks,
        options={"fetch_cache": True, "save_cache": True, "cache_only": False},
        created=now,
        updated=now,
    )


def holders(store: Store, model_hash: str) -> dict[str, str | None]:
    """Unfinished jobs of a model, and who holds a live lease on each."""
    return {c.job_id: c.holder for c in store.candidates(model_hash, time.time())}


def state_is(status: dict[str, Any], state: str) -> dict[str, Any] | None:
    return status if status["state"] == state else None


@pytest.fixture
def store(bundle: Path, store_settings: dict[str, str]) -> Iterator[Store]:
    opened = open_store(load_bundle(bundle), ServeSettings.model_validate(store_settings))
    try:
        yield opened
    finally:
        opened.close()


def test_a_chunk_saved_twice_counts_its_rows_once(store: Store) -> None:
    store.create_job(record("j1", "h"), [["a", "b"], ["c", "d"]])
    assert store.claim("j1", "me", time.time() + 60, takeover=None)
    rows = ChunkResult([[1, "A"], None], {1: "could not parse"})

    first = store.save_chunk("j1", 0, rows, computed=2, cached=0)
    again = store.save_chunk("j1", 0, rows, computed=0, cached=2)
    job = store.get_job("j1")

    assert first and again
    assert job is not None
    assert (job.done, job.nulls, job.chunks_processed) == (2, 1, 2)
    assert (job.computed, job.cached) == (2, 2)
    assert store.finished_chunks("j1") == {0}
    assert store.read_chunk("j1", 0) == rows
    assert store.read_chunk("j1", 1) is None
    assert store.chunk_inputs("j1", 1) == ["c", "d"]


def test_a_live_lease_keeps_a_job_from_other_replicas_until_it_runs_out(store: Store) -> None:
    store.create_job(record("j1", "h"), [["a", "b"], ["c", "d"]])

    assert store.claim("j1", "first", time.time() + 60, takeover=None)
    assert not store.claim("j1", "second", time.time() + 60, takeover=None)
    assert holders(store, "h") == {"j1": "first"}
    assert store.candidates("other model hash", time.time()) == []
    # A holder known to be dead is taken over at once.
    assert store.claim("j1", "second", time.time() + 0.05, takeover="first")
    assert not store.renew("j1", "first", time.time() + 60)
    # A lease that runs out frees the job for anyone.
    wait_for(lambda: holders(store, "h") == {"j1": None} or None, within=10, what="lease end")
    assert store.claim("j1", "third", time.time() + 60, takeover=None)
    assert store.renew("j1", "third", time.time() + 60)


def test_a_cancelled_job_loses_its_data_and_refuses_chunks(store: Store) -> None:
    store.create_job(record("j1", "h"), [["a", "b"], ["c", "d"]])
    store.claim("j1", "me", time.time() + 60, takeover=None)
    store.save_chunk("j1", 0, ChunkResult([[1, "A"], [2, "B"]]), computed=2, cached=0)

    assert store.cancel("j1") == "cancelled"
    assert not store.save_chunk("j1", 1, ChunkResult([[1, "C"], [2, "D"]]), computed=2, cached=0)
    assert not store.renew("j1", "me", time.time() + 60)
    assert store.finished_chunks("j1") == set()
    assert store.chunk_inputs("j1", 0) is None
    assert store.candidates("h", time.time()) == []
    assert store.cancel("j1") == "deleted"
    assert store.get_job("j1") is None
    assert store.cancel("j1") is None


def test_a_holder_is_dead_only_when_it_is_a_process_of_this_host_that_is_gone() -> None:
    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    here = host_key()

    assert holder_is_dead(f"{here}/{int(ended.stdout)}/00000000")
    assert not holder_is_dead(f"{here}/1/00000000")  # alive (init)
    assert not holder_is_dead(ELSEWHERE)


def test_a_job_held_by_a_live_replica_elsewhere_is_left_alone_and_taken_once_its_lease_ends(
    bundle: Path, store_settings: dict[str, str]
) -> None:
    manifest = load_bundle(bundle).manifest
    settings = ServeSettings.model_validate(store_settings)
    seeded = open_store(load_bundle(bundle), settings)
    try:
        for job_id, lease in (("held", 3600.0), ("orphaned", 0.05)):
            seeded.create_job(record(job_id, manifest.model_hash), [["CCO", "zz"], ["x", "hello"]])
            assert seeded.claim(job_id, ELSEWHERE, time.time() + lease, takeover=None)
        # The orphaned job's replica finished one chunk before it died.
        done = ChunkResult([[3, "CCO"], [2, "ZZ"]])
        assert seeded.save_chunk("orphaned", 0, done, computed=2, cached=0)
        wait_for(
            lambda: holders(seeded, manifest.model_hash)["orphaned"] is None or None,
            within=10,
            what="the orphaned job's lease to run out",
        )
    finally:
        seeded.close()

    with app_client(bundle, cold=True, **store_settings) as client:
        orphaned = wait_for(
            lambda: state_is(client.get("/job/status/orphaned").json(), "done"),
            within=60,
            what="the orphaned job to finish",
        )
        held = client.get("/job/status/held").json()
        rows = client.get("/job/result/orphaned").json()
        store = client.app.state.jobs.store  # type: ignore[attr-defined]
        left = holders(store, manifest.model_hash)

    assert rows == [
        {"length": 3, "upper": "CCO"},
        {"length": 2, "upper": "ZZ"},
        {"length": 1, "upper": "X"},
        {"length": 5, "upper": "HELLO"},
    ]
    assert (orphaned["chunks_processed"], orphaned["computed_rows"]) == (2, 4)
    assert held["state"] == "running" and held["done"] == 0
    assert left == {"held": ELSEWHERE}
