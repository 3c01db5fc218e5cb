"""ersilia_serve's state options on the real console script: job chunks, cache, Redis."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import httpx
from helpers import run_command, served


def test_job_and_cache_flags_reach_the_server(packed: Callable[..., Path]) -> None:
    bundle = packed("stdlib-simple")
    inputs = ["a", "bb", "ccc", "dddd", "eeeee"]
    with served(bundle, "--job-chunk-size", "2", "--cache-size", "0") as url:
        job = httpx.post(f"{url}/job/submit", params={"api": "run"}, json=inputs).json()
        deadline = time.monotonic() + 60
        while True:
            status = httpx.get(f"{url}/job/status/{job['job_id']}").json()
            if status["state"] == "done" or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        again = httpx.post(f"{url}/run", json=inputs)
    assert status["state"] == "done"
    assert status["chunks"] == 3  # five inputs in chunks of two
    assert again.headers["x-cached-rows"] == "0"  # a cache of size 0 keeps nothing


def test_an_unreachable_redis_fails_before_serving_with_a_plain_message(
    packed: Callable[..., Path],
) -> None:
    bundle = packed("stdlib-simple")
    result = run_command(
        "ersilia_serve", "--repository_dir", bundle, "--port", "0",
        "--redis-url", "redis://127.0.0.1:1/0", timeout=60,
    )  # fmt: skip
    assert result.returncode == 4
    assert "cannot use Redis at redis://127.0.0.1:1/0" in result.stderr
    assert "Traceback" not in result.stderr
    assert "Uvicorn running on" not in result.stderr
