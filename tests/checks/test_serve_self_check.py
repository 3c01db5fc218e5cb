"""The serve-time self-check: each API's example runs the way it is served before ready.

`changes-after-pack` passes every pack check; the tests then change its packed bundle as the
world does after a pack: a new checkpoint (its example no longer reproduces: not ready, with
the reason), or a machine where its warm mode fails (a library that refuses to run in a
process forked after it was imported, as CUDA does): served cold instead, with right rows.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import pack_fixture, served

pytestmark = pytest.mark.slow

CONCURRENT = 40


@pytest.fixture
def bundle(tmp_path: Path) -> Path:
    packed = pack_fixture("changes-after-pack", tmp_path / "repository")
    (api,) = json.loads((packed / "manifest.json").read_text())["apis"]
    assert api["decided"]["warm"] is True and api["decided"]["serial"] is False
    return packed


def checked(url: str, within: float = 60) -> tuple[int, dict[str, Any]]:
    """/readyz once every API is ready or its self-check failed: its status and body."""
    deadline = time.monotonic() + within
    while True:
        response = httpx.get(f"{url}/readyz", timeout=10)
        body = response.json()
        waiting = [c for c in body["checks"].values() if not c["ready"] and c["check"] != "failed"]
        if not waiting or time.monotonic() > deadline:
            return response.status_code, body
        time.sleep(0.1)


def metric(url: str, name: str) -> float:
    text = httpx.get(f"{url}/metrics", timeout=10).text
    (line,) = [row for row in text.splitlines() if row.startswith(f'{name}{{api="run"}}')]
    return float(line.split()[-1])


def scaled(values: list[str], factor: int = 1) -> list[dict[str, int]]:
    return [{"scaled": len(value) * factor} for value in values]


def test_a_bundle_whose_checkpoint_changed_is_not_ready_and_says_why(bundle: Path) -> None:
    (bundle / "model" / "checkpoints" / "factor.txt").write_text("2\n")
    with served(bundle, "--cache-size", "0") as url:
        status, body = checked(url)
        answer = httpx.post(f"{url}/run", json=["CCO"], timeout=60)
        passed = metric(url, "ersilia_pack_self_check_passed")
    assert status == 503
    assert body["apis"] == {"run": False}
    check = body["checks"]["run"]
    assert check["check"] == "failed"
    # the mode served, the safer ones tried, and the first cells that differ
    assert "warm: run: row 1, column 'scaled' is 6; the example output says '3'" in check["detail"]
    assert "| cold: run: row 1" in check["detail"]
    assert "cold, one run at a time: run: row 1" in check["detail"]
    assert answer.status_code == 503
    assert answer.json()["detail"] == check["detail"]
    assert passed == 0


def test_a_warm_mode_that_fails_only_where_served_moves_to_cold(bundle: Path) -> None:
    (bundle / "model" / "checkpoints" / "refuse-fork").write_text("")
    inputs = [[f"C{'C' * k}O", "N" * k] for k in range(1, CONCURRENT + 1)]
    with served(bundle, "--cache-size", "0") as url:
        status, body = checked(url)
        with ThreadPoolExecutor(CONCURRENT) as pool:
            answers = list(
                pool.map(lambda v: httpx.post(f"{url}/run", json=v, timeout=120), inputs)
            )
        changes = metric(url, "ersilia_pack_mode_changes_total")
        seconds = metric(url, "ersilia_pack_self_check_seconds")
    assert status == 200, body
    assert body["checks"]["run"] == {
        "ready": True,
        "check": "passed",
        "mode": "cold",
        "device": "cpu",
    }
    for values, answer in zip(inputs, answers):
        assert answer.status_code == 200, answer.text
        assert answer.json() == scaled(values)
    assert changes == 1 and seconds > 0


def test_without_the_self_check_a_failing_warm_run_moves_the_api_to_cold_once(
    bundle: Path,
) -> None:
    (bundle / "model" / "checkpoints" / "refuse-fork").write_text("")
    with served(bundle, "--cache-size", "0", "--no-self-check") as url:
        status, before = checked(url)
        first = httpx.post(f"{url}/run", json=["CCO", "c1ccccc1"], timeout=120)
        second = httpx.post(f"{url}/run", json=["NN"], timeout=120)
        _, after = checked(url)
        changes = metric(url, "ersilia_pack_mode_changes_total")
    assert status == 200
    assert before["checks"]["run"] == {
        "ready": True,
        "check": "skipped",
        "mode": "warm",
        "device": "cpu",
    }
    assert first.status_code == 200, first.text
    assert first.json() == scaled(["CCO", "c1ccccc1"])
    assert second.json() == scaled(["NN"])
    assert after["checks"]["run"]["mode"] == "cold"
    assert changes == 1
