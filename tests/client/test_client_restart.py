"""Job.wait() rides through its server being killed and started again on the same port."""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path
from typing import Any

import pytest
from clientkit import free_port, wait_for
from helpers import console_script, processes_mentioning, server_process, wait_until_gone

from ersilia_pack.client import Client, JobStatus

pytestmark = pytest.mark.slow


def test_wait_rides_through_a_server_restart_and_returns_the_whole_result(
    counting_repository: Path, tmp_path: Path, client_log: list[str]
) -> None:
    port = free_port()
    argv = [
        console_script("ersilia_serve"),
        "--repository_dir",
        str(counting_repository),
        "--port",
        str(port),
        "--workers",
        "2",
    ]
    # Chunks of 100 inputs, each run held 0.3 s: the job takes many seconds, so the kill
    # lands in its middle.
    env = {"CLIENT_TEST_DELAY": "0.3", "ERSILIA_PACK_JOB_CHUNK_SIZE": "100"}
    inputs = [f"molecule-{i:05d}" for i in range(3000)]
    seen: list[JobStatus] = []
    outcome: dict[str, Any] = {}

    with server_process(argv, env=env) as url:
        client = Client(url, retries=3, backoff=0.2)
        job = client.submit(inputs)

        def follow() -> None:
            try:
                outcome["status"] = job.wait(progress=seen.append, poll=0.2, outage=120)
            except Exception as error:  # the test reads it below
                outcome["error"] = error

        waiter = threading.Thread(target=follow, daemon=True)
        waiter.start()
        wait_for(lambda: seen and seen[-1].done >= 200, within=120, what="200 rows done")
        # kill -9 of the server's process group: no shutdown code runs.
        for pid in processes_mentioning(f"--port\x00{port}\x00"):
            os.killpg(pid, signal.SIGKILL)
        before = seen[-1]
        wait_for(
            lambda: any("server unreachable" in line for line in client_log),
            within=60,
            what="wait() to meet the dead server",
        )
        assert waiter.is_alive(), outcome

    assert before.state == "running"
    assert before.done < len(inputs)
    with server_process(argv, env=env) as again:
        assert again == url  # the same port
        waiter.join(timeout=240)
        assert not waiter.is_alive(), "wait() did not return after the restart"
        assert "error" not in outcome, outcome.get("error")
        rows = job.result()
        client.close()

    status: JobStatus = outcome["status"]
    assert status.state == "done"
    assert status.done == status.total == len(inputs)
    assert rows == [{"length": len(text), "upper": text.upper()} for text in inputs]
    assert wait_until_gone(str(counting_repository)) == []
