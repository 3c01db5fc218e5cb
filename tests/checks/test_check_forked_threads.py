"""The pack-time fork check does not judge from one sample: a load-once model whose load()
leaves a thread running is served with a process per slot, whatever one forked run showed.

`load-thread-lock` starts a thread in load() that holds a lock half the time; a slot forked
while it holds the lock waits for it for ever. One forked run passes one time in two, and the
model then hangs at serve time; the thread itself is what decides now.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import httpx
from helpers import FIXTURES, run_command, served


def test_a_load_that_leaves_a_thread_running_is_served_with_a_process_per_slot(
    tmp_path: Path,
) -> None:
    eos = tmp_path / "eos"
    done = run_command(
        "ersilia_pack", "--model_dir", FIXTURES / "load-thread-lock", "--system", "--eos", eos
    )
    assert done.returncode == 0, done.stderr
    (bundle,) = (eos / "repository" / "load-thread-lock").glob("2*")
    (api,) = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))["apis"]

    assert api["decided"]["fork"] is False
    assert "run is served with a process per slot" in done.stderr
    assert "leaves 1 threads running (lock-holder)" in done.stderr

    with served(bundle.parent, "--workers", "2", "--timeout", "20") as url:
        began = time.monotonic()
        answers = [httpx.post(f"{url}/run", json=[f"C{'C' * i}O"], timeout=60) for i in range(8)]
        took = time.monotonic() - began

    assert [answer.status_code for answer in answers] == [200] * 8
    assert [answer.json() for answer in answers] == [[{"length": i + 2}] for i in range(8)]
    assert took < 20
