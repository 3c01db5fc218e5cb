"""A big upload is parsed off the event loop: /healthz answers at once while a ~45 MB CSV sent
to /job/submit is read, on a real server."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from security_helpers import Server, serve, wait_ready

ROWS = 1_500_000


@pytest.fixture(scope="module")
def server(demo_repository: Path) -> Iterator[Server]:
    with serve(demo_repository, "--workers", "1") as running:
        wait_ready(running.url)
        yield running


def test_healthz_stays_responsive_while_a_big_csv_is_parsed(server: Server) -> None:
    body = ("smiles\n" + "".join(f"CC(=O)OC1=CC=CC=C1C(=O)O{i}\n" for i in range(ROWS))).encode()
    assert len(body) > 40_000_000
    answer: dict[str, httpx.Response] = {}

    def submit() -> None:
        answer["submit"] = httpx.post(
            f"{server.url}/job/submit?api=run&cache_only=true",
            content=body,
            headers={"Content-Type": "text/csv"},
            timeout=120,
        )

    uploader = threading.Thread(target=submit)
    worst = 0.0
    polls = 0
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert client.get("/healthz").status_code == 200
        uploader.start()
        while uploader.is_alive():
            started = time.perf_counter()
            assert client.get("/healthz").status_code == 200
            worst = max(worst, time.perf_counter() - started)
            polls += 1
            time.sleep(0.02)
        uploader.join()
        submitted = answer["submit"]
        assert submitted.status_code == 202, submitted.text
        assert submitted.json()["total"] == ROWS
        client.delete(f"/job/{submitted.json()['job_id']}")
    # The upload took a while (parsing alone takes seconds), with /healthz asked all along.
    assert polls >= 10
    assert worst < 1.0, f"/healthz took {worst:.2f} s while the upload was parsed"
