"""Both stores, driven directly and through a served app: chunk claims, records, takeover."""

from __future__ import annotations

import sqlite3
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
from ersilia_pack.runtime.jobs.manager import holder_is_dead, host_key
from ersilia_pack.runtime.settings import ServeSettings
from ersilia_pack.runtime.state.sqlite_store import SqliteStore
from ersilia_pack.runtime.state.store import (
    FINISHED,
    SAVED,
    STOPPED,
    ChunkClaim,
    ChunkResult,
    JobRecord,
    Store,
    new_job_id,
    open_store,
)

ELSEWHERE = "another-host/4242/0a0b0c0d"  # a replica on another machine: never judged dead


def ended_pid() -> int:
    """The id of a process of this host that has ended."""
    ended = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        check=True,
        capture_output=True,
        text=True,
    )
    return int(ended.stdout)


def record(job_id: str, model_hash: str, chunks: int = 2) -> JobRecord:
    now = time.time()
    return JobRecord(
        id=job_id,
        api="run",
        owner="",
        model_hash=model_hash,
        state="queued",
        total=2 * chunks,
        chunk_size=2,
        chunks=chunks,
        options={"fetch_cache": True, "save_cache": True, "cache_only": False},
        created=now,
        updated=now,
    )


def claim(store: Store, holder: str, count: int = 10, model_hash: str = "h") -> list[ChunkClaim]:
    return store.claim_chunks(model_hash, holder, count, block=0)


def take(store: Store, holder: str, *, idle: float = 3600, model_hash: str = "h") -> set[int]:
    """Chunks ``holder`` takes over from others (holders that are gone, or claims left idle)."""
    taken = store.take_over(model_hash, holder, 10, idle=idle, is_dead=holder_is_dead)
    return {c.chunk for c in taken}


def chunks(claims: list[ChunkClaim]) -> list[tuple[str, int]]:
    return [(c.job_id, c.chunk) for c in claims]


def state_is(status: dict[str, Any], state: str) -> dict[str, Any] | None:
    return status if status["state"] == state else None


@pytest.fixture
def store(bundle: Path, store_settings: dict[str, str]) -> Iterator[Store]:
    opened = open_store(load_bundle(bundle), ServeSettings.model_validate(store_settings))
    try:
        yield opened
    finally:
        opened.close()


def test_each_chunk_is_claimed_by_one_replica_and_its_job_runs_from_the_first_claim(
    store: Store,
) -> None:
    store.create_job(record("j1", "h", chunks=3), [["a", "b"], ["c", "d"], ["e"]])
    store.create_job(record("other", "another model hash"), [["a", "b"], ["c", "d"]])
    queued = store.get_job("j1")

    first = claim(store, "first", 1)
    second = claim(store, "second", 5)
    third = claim(store, "third", 5)
    running = store.get_job("j1")

    assert queued is not None and queued.state == "queued"
    assert chunks(first) == [("j1", 0)]
    assert chunks(second) == [("j1", 1), ("j1", 2)]
    assert third == []
    assert running is not None and running.state == "running"
    assert chunks(claim(store, "first", model_hash="another model hash")) == [
        ("other", 0),
        ("other", 1),
    ]


def test_a_chunk_saved_twice_counts_its_rows_once_and_the_last_chunk_finishes_the_job(
    store: Store,
) -> None:
    store.create_job(record("j1", "h"), [["a", "b"], ["c", "d"]])
    zero, one = claim(store, "me")
    rows = ChunkResult([[1, "A"], None], {1: "could not parse"})

    first = store.save_chunk(zero, rows, computed=2, cached=0)
    again = store.save_chunk(zero, rows, computed=0, cached=2)
    half = store.get_job("j1")
    last = store.save_chunk(one, ChunkResult([[1, "C"], [1, "D"]]), computed=2, cached=0)
    after = store.save_chunk(one, ChunkResult([[1, "C"], [1, "D"]]), computed=2, cached=0)
    job = store.get_job("j1")

    assert (first, again, last, after) == (SAVED, SAVED, FINISHED, STOPPED)
    assert half is not None and half.state == "running"
    assert (half.done, half.nulls, half.chunks_processed) == (2, 1, 2)
    assert (half.computed, half.cached) == (2, 2)
    assert job is not None and job.state == "done"
    assert (job.done, job.nulls, job.chunks_processed) == (4, 1, 3)
    assert store.finished_chunks("j1") == {0, 1}
    assert store.read_chunk("j1", 0) == rows
    assert store.chunk_inputs("j1", 1) == ["c", "d"]
    assert take(store, "someone", idle=0) == set()


def test_a_claim_left_unrenewed_is_taken_over_and_its_first_holder_loses_it(store: Store) -> None:
    store.create_job(record("j1", "h"), [["a", "b"], ["c", "d"]])
    zero, one = claim(store, ELSEWHERE)

    assert take(store, "second") == set()  # live claims, from a replica on another machine
    time.sleep(0.3)  # lets both claims age; only chunk 1's is renewed
    assert store.renew([one], ELSEWHERE) == [True]
    assert take(store, "second", idle=0.2) == {0}
    assert store.renew([zero, one], ELSEWHERE) == [False, True]
    assert take(store, "third", idle=0.2) == set()


def test_chunks_of_a_dead_process_of_this_host_are_taken_at_once(store: Store) -> None:
    store.create_job(record("j1", "h"), [["a", "b"], ["c", "d"]])
    dead = f"{host_key()}/{ended_pid()}/00000000"
    claim(store, dead)

    assert take(store, "second") == {0, 1}
    assert take(store, "third") == set()


def test_released_claims_are_taken_by_another_replica_at_once(store: Store) -> None:
    store.create_job(record("j1", "h"), [["a", "b"], ["c", "d"]])
    zero, one = claim(store, "first")

    store.release([zero], "first")
    again = {c.chunk for c in claim(store, "second")} | take(store, "second")

    assert again == {0}
    assert store.renew([zero, one], "first") == [False, True]


def test_a_cancelled_job_loses_its_data_and_its_claims(store: Store) -> None:
    store.create_job(record("j1", "h", chunks=3), [["a", "b"], ["c", "d"], ["e"]])
    zero, one = claim(store, "me", 2)
    store.save_chunk(zero, ChunkResult([[1, "A"], [2, "B"]]), computed=2, cached=0)

    assert store.cancel("j1") == "cancelled"
    assert store.save_chunk(one, ChunkResult([[1, "C"], [2, "D"]]), computed=2, cached=0) == STOPPED
    assert store.renew([one], "me") == [False]
    assert claim(store, "other") == []
    assert take(store, "other", idle=0) == set()
    assert store.finished_chunks("j1") == set()
    assert store.chunk_inputs("j1", 0) is None
    assert store.cancel("j1") == "deleted"
    assert store.get_job("j1") is None
    assert store.cancel("j1") is None


def test_a_failed_job_gives_no_more_chunks(store: Store) -> None:
    store.create_job(record("j1", "h", chunks=3), [["a", "b"], ["c", "d"], ["e"]])
    (zero,) = claim(store, "me", 1)

    assert store.finish("j1", "failed", "the model is broken")
    assert claim(store, "other") == []
    assert store.renew([zero], "me") == [False]
    job = store.get_job("j1")
    assert job is not None and (job.state, job.error) == ("failed", "the model is broken")
    assert not store.finish("j1", "failed", "again")


def test_a_holder_is_dead_only_when_it_is_a_process_of_this_host_that_is_gone() -> None:
    here = host_key()

    assert holder_is_dead(f"{here}/{ended_pid()}/00000000")
    assert not holder_is_dead(f"{here}/1/00000000")  # alive (init)
    assert not holder_is_dead(ELSEWHERE)


def test_a_server_takes_the_chunks_of_a_dead_replica_and_leaves_a_live_ones_alone(
    bundle: Path, store_settings: dict[str, str]
) -> None:
    manifest = load_bundle(bundle).manifest
    # Ids of the shape the server makes: the job routes answer 404 to any other.
    held_id, orphaned_id = new_job_id(), new_job_id()
    dead = f"{host_key()}/{ended_pid()}/00000000"
    seeded = open_store(load_bundle(bundle), ServeSettings.model_validate(store_settings))
    try:
        seeded.create_job(record(held_id, manifest.model_hash), [["CCO", "zz"], ["x", "hello"]])
        assert len(claim(seeded, ELSEWHERE, model_hash=manifest.model_hash)) == 2
        seeded.create_job(record(orphaned_id, manifest.model_hash), [["CCO", "zz"], ["x", "hello"]])
        zero, _ = claim(seeded, dead, model_hash=manifest.model_hash)
        # The orphaned job's replica finished one chunk before it died.
        assert seeded.save_chunk(zero, ChunkResult([[3, "CCO"], [2, "ZZ"]]), computed=2, cached=0)
    finally:
        seeded.close()

    with app_client(bundle, cold=True, **store_settings) as client:
        orphaned = wait_for(
            lambda: state_is(client.get(f"/job/status/{orphaned_id}").json(), "done"),
            within=60,
            what="the orphaned job to finish",
        )
        held = client.get(f"/job/status/{held_id}").json()
        rows = client.get(f"/job/result/{orphaned_id}").json()

    assert rows == [
        {"length": 3, "upper": "CCO"},
        {"length": 2, "upper": "ZZ"},
        {"length": 1, "upper": "X"},
        {"length": 5, "upper": "HELLO"},
    ]
    assert (orphaned["chunks_processed"], orphaned["computed_rows"]) == (2, 4)
    assert held["state"] == "running" and held["done"] == 0


def test_a_job_database_of_schema_1_gets_a_queue_of_the_chunks_its_jobs_have_not_recorded(
    bundle: Path,
) -> None:
    path = bundle / "state" / "state.db"
    first = SqliteStore(path)
    first.create_job(record("j1", "h", chunks=3), [["a", "b"], ["c", "d"], ["e"]])
    (zero,) = claim(first, "me", 1)
    first.save_chunk(zero, ChunkResult([[1, "A"], [1, "B"]]), computed=2, cached=0)
    first.close()
    # What schema 1 kept: no queue table.
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE job_queue")
        db.execute("PRAGMA user_version = 1")

    upgraded = SqliteStore(path)
    try:
        claimed = chunks(claim(upgraded, "after the upgrade"))
    finally:
        upgraded.close()

    assert claimed == [("j1", 1), ("j1", 2)]


def test_jobs_are_counted_by_state_for_their_model_only(store: Store) -> None:
    store.create_job(record("j1", "h", chunks=1), [["a"]])
    store.create_job(record("j2", "h", chunks=1), [["b"]])
    store.create_job(record("j3", "h", chunks=1), [["c"]])
    store.create_job(record("other", "another model hash", chunks=1), [["d"]])
    (first,) = claim(store, "me", 1)
    store.save_chunk(first, ChunkResult([[1, "A"]]), computed=1, cached=0)
    store.cancel("j3")

    assert store.count_jobs("h") == {"done": 1, "queued": 1, "cancelled": 1}
    assert store.count_jobs("another model hash") == {"queued": 1}
    assert store.count_jobs("no such model") == {}
