"""Replicas of one model on one real Redis share the chunks of a job (real ersilia_serve).

The sleepy fixture model waits a few milliseconds per input and writes each input it computed
to a counter file with the name of its replica, so a test sees who computed what, and how often.
"""

from __future__ import annotations

import contextlib
import math
import shutil
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest
from jobkit import (
    SLEEPY_CHUNK,
    SLEEPY_OPTIONS,
    Server,
    check_sleepy_result,
    computations,
    final,
    sleepy_env,
    sleepy_inputs,
    wait_for,
)

NAMES = "abc"


def replica(bundle: Path, folder: Path) -> Path:
    """A replica's own copy of the bundle (its own machine, as far as files go)."""
    shutil.copytree(bundle, folder / bundle.name, ignore=shutil.ignore_patterns("state"))
    return folder


def replicas(
    stack: contextlib.ExitStack, bundle: Path, root: Path, redis_url: str, counter: Path, n: int
) -> list[Server]:
    return [
        stack.enter_context(
            Server(
                replica(bundle, root / name),
                *SLEEPY_OPTIONS,
                env=sleepy_env(redis_url, counter, name),
            )
        )
        for name in NAMES[:n]
    ]


@pytest.mark.parametrize("count", [1, 3])
def test_one_job_is_shared_by_every_replica_and_each_row_is_computed_once(
    sleepy_packed: Path, tmp_path: Path, redis_url: str, count: int
) -> None:
    inputs = sleepy_inputs(3000)
    counter = tmp_path / "computed.txt"
    with contextlib.ExitStack() as stack:
        servers = replicas(stack, sleepy_packed, tmp_path, redis_url, counter, count)
        submitted = servers[0].post("/job/submit", json=inputs)
        job_id = submitted.json()["job_id"]
        status = wait_for(lambda: final(servers[-1], job_id), within=300, what="the job")
        check_sleepy_result(servers[-1], job_id, inputs)

    done = computations(counter)
    by_replica = Counter(name for name, _ in done)
    assert submitted.status_code == 202
    assert status["state"] == "done", status
    assert status["done"] == status["total"] == len(inputs)
    assert status["chunks"] == status["chunks_processed"] == math.ceil(len(inputs) / SLEEPY_CHUNK)
    assert (status["computed_rows"], status["cached_rows"], status["null_rows"]) == (3000, 0, 0)
    assert sorted(text for _, text in done) == inputs  # each input computed exactly once
    assert set(by_replica) == set(NAMES[:count])  # every replica took part
    assert all(value % SLEEPY_CHUNK == 0 for value in by_replica.values())  # whole chunks


def test_a_replica_killed_mid_job_leaves_its_chunk_to_the_others_and_no_row_is_lost(
    sleepy_packed: Path, tmp_path: Path, redis_url: str
) -> None:
    inputs = sleepy_inputs(4000)
    counter = tmp_path / "computed.txt"
    with contextlib.ExitStack() as stack:
        a, b, c = replicas(stack, sleepy_packed, tmp_path, redis_url, counter, 3)
        job_id = b.post("/job/submit", json=inputs).json()["job_id"]
        # b is killed in the middle of a chunk: some of its inputs computed, none recorded.
        wait_for(
            lambda: (
                sum(name == "b" for name, _ in computations(counter)) % SLEEPY_CHUNK > 10 or None
            ),
            within=120,
            what="replica b to be part way through a chunk",
        )
        b.kill()
        killed_at = len(computations(counter))
        status = wait_for(lambda: final(a, job_id), within=300, what="the job to finish")
        check_sleepy_result(c, job_id, inputs)

    done = computations(counter)
    times = Counter(text for _, text in done)
    again = {text for text, n in times.items() if n > 1}
    by_b = {text for name, text in done if name == "b"}
    assert killed_at < len(inputs)
    assert status["state"] == "done", status
    assert status["done"] == status["total"] == len(inputs)
    # b's last chunk was never recorded, so no chunk was recorded twice.
    assert status["chunks"] == status["chunks_processed"] == len(inputs) // SLEEPY_CHUNK
    assert set(times) == set(inputs)  # every input computed, the lost ones again elsewhere
    assert 0 < len(again) < SLEEPY_CHUNK and again <= by_b
    assert max(times.values()) == 2


def test_cancelling_a_job_on_one_replica_stops_the_others_work_on_it(
    sleepy_packed: Path, tmp_path: Path, redis_url: str
) -> None:
    inputs = sleepy_inputs(6000)
    counter = tmp_path / "computed.txt"
    with contextlib.ExitStack() as stack:
        a, b = replicas(stack, sleepy_packed, tmp_path, redis_url, counter, 2)
        job_id = a.post("/job/submit", json=inputs).json()["job_id"]
        wait_for(
            lambda: {"a", "b"} <= {name for name, _ in computations(counter)} or None,
            within=120,
            what="both replicas to compute",
        )
        recorded = a.status(job_id)["done"]
        cancelled = a.delete(f"/job/{job_id}")
        # b hears of it when it next renews its claim, or when it tries to record its chunk;
        # either way the chunk it had taken ends unsaved.
        wait_for(
            lambda: any(_stopped(line, job_id) for line in b.output) or None,
            within=60,
            what="replica b to stop its chunk",
        )
        after = b.status(job_id)
        wait_for(_settled(counter), within=60, what="the last runs to end")
        later = b.post("/run", json=["item-1"])

    computed = len(computations(counter))
    assert cancelled.json() == {"job_id": job_id, "state": "cancelled"}
    assert after["state"] == "cancelled"
    # After the rows recorded when it was cancelled, at most the chunks in flight then were
    # computed: one per replica, and one more each if a chunk ended between status and cancel.
    assert computed <= recorded + 4 * SLEEPY_CHUNK < len(inputs)
    assert later.json() == [{"length": 6, "reversed": "1-meti"}]


def _stopped(line: str, job_id: str) -> bool:
    return line.startswith(f"job {job_id}: chunk ") and (
        " stopped: " in line or " dropped: " in line
    )


def _settled(counter: Path) -> Callable[[], bool | None]:
    """A check that is true once the counter file stopped growing for ten looks in a row."""
    sizes: list[int] = []

    def check() -> bool | None:
        sizes.append(len(computations(counter)))
        return True if len(sizes) > 10 and len(set(sizes[-10:])) == 1 else None

    return check
