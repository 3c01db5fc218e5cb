"""A cold run never outlives its server: killed with SIGKILL mid-run, the server takes the run's
script and every child it started with it, and the next start kills what a run left running
before it removes the run's folder."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest
from security_helpers import FIXTURES, pack_repository, processes_of, serve, wait_ready

from ersilia_pack.runtime.engine import workspace


@pytest.fixture(scope="module")
def spawning_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/fixtures/cold-run-spawns packed with --system."""
    return pack_repository(FIXTURES / "cold-run-spawns", tmp_path_factory.mktemp("spawns-eos"))


def _sleepers(pids: dict[int, str]) -> dict[int, str]:
    return {pid: line for pid, line in pids.items() if line.startswith("sleep")}


def test_a_cold_run_and_its_children_die_with_a_server_killed_mid_run(
    spawning_repository: Path,
) -> None:
    with serve(spawning_repository, "--cold", "--workers", "1") as server:
        wait_ready(server.url)

        def call() -> None:  # answered by no one: the server is killed under it
            with contextlib.suppress(httpx.HTTPError):
                httpx.post(f"{server.url}/run", json=["sleep"], timeout=30)

        threading.Thread(target=call, daemon=True).start()
        deadline = time.monotonic() + 20
        while len(_sleepers(processes_of(server))) < 2:  # the script's sleep and its child's
            assert time.monotonic() < deadline, processes_of(server)
            time.sleep(0.05)
        during = processes_of(server)

        os.kill(server.pid, signal.SIGKILL)  # the server alone: its runs are other sessions
        server.process.wait(timeout=10)
        deadline = time.monotonic() + 5
        while (left := processes_of(server)) and time.monotonic() < deadline:
            time.sleep(0.05)

    assert any("run.sh" in line for line in during.values()), during
    assert left == {}, f"processes of the run outlived their server: {left}"


def test_the_start_up_sweep_kills_what_still_runs_in_a_stale_run_folder(tmp_path: Path) -> None:
    gone = subprocess.Popen(["true"])
    gone.wait()  # a server process id that no longer exists
    folder = tmp_path / "runs" / f"run.{gone.pid}.abc"
    (folder / "model" / "framework").mkdir(parents=True)
    tmp = tmp_path / f"{workspace.TMP_PREFIX}x"
    tmp.mkdir()
    os.symlink(tmp, folder / "tmp")
    in_folder = subprocess.Popen(
        ["sleep", "300"], cwd=folder / "model" / "framework", start_new_session=True
    )
    elsewhere = subprocess.Popen(
        ["sleep", "300"],
        cwd=tmp_path,
        env={**os.environ, "TMPDIR": str(tmp)},
        start_new_session=True,
    )
    try:
        removed = workspace.sweep(tmp_path / "runs")
        codes = [process.wait(timeout=5) for process in (in_folder, elsewhere)]
    finally:
        for process in (in_folder, elsewhere):
            process.kill()
            process.wait()

    assert removed == 1
    assert codes == [-signal.SIGKILL, -signal.SIGKILL]
    assert not folder.exists() and not tmp.exists()
