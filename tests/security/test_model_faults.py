"""Models that misbehave, on a real server (tests/fixtures/security-faults).

A script crashes with a traceback full of paths and a secret, hangs with a child of its own,
prints binary garbage, or writes too few rows; a load-once worker raises, prints to stdout,
kills itself, or is killed with SIGKILL while it holds a request. Each request gets a clean
JSON answer (no traceback, path or secret) carrying a request id that the server's log ties to
the full detail; the server keeps answering correct requests, and no temporary file, child
process or zombie is left behind.
"""

from __future__ import annotations

import os
import re
import secrets
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers import run_leftovers
from security_helpers import Server, children_of, processes_of, serve, wait_ready

SECRET = f"s3cret-{secrets.token_hex(8)}"
ENV = {"FAULTS_SECRET_TOKEN": SECRET}
# The fixture's APIs fail their own examples on purpose; the start-up self-check would hold
# them back with a 503 (tests/security/test_process_faults.py covers that), where these tests
# look at how each failure is answered.
ARGS = ("--workers", "1", "--timeout", "3", "--no-self-check")


def bundle_of(repository: Path) -> Path:
    (bundle,) = [path for path in repository.iterdir() if path.name[:1].isdigit()]
    return bundle


@pytest.fixture(scope="module")
def server(faults_repository: Path) -> Iterator[Server]:
    with serve(faults_repository, *ARGS, env=ENV) as running:
        wait_ready(running.url)
        yield running


@pytest.fixture(scope="module")
def bundle(faults_repository: Path) -> Path:
    return bundle_of(faults_repository)


def post(server: Server, api: str, inputs: list[str], **params: str) -> httpx.Response:
    return httpx.post(f"{server.url}/{api}", json=inputs, params=params, timeout=60)


def clean_error(server: Server, response: httpx.Response, status: int, bundle: Path) -> str:
    """The detail of an error answer, after checking it gives nothing away."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    detail = response.json()["detail"]
    assert isinstance(detail, str) and detail
    for leak in ("Traceback", 'File "', str(bundle), "/tmp", SECRET, "FAULTS_SECRET_TOKEN"):
        assert leak not in response.text, leak
    request_id = response.headers["x-request-id"]
    assert server.wait_for_log(f"[request id {request_id}]"), server.log
    return str(detail)


def worker_parents(server: Server) -> set[int]:
    """The load-once parents the server started (one per API; each loads its model once)."""
    children = children_of(server.pid)
    return {
        pid
        for pid, cmdline in processes_of(server).items()
        if "app/worker.py" in cmdline and children.get(pid) not in (None, "Z")
    }


def worker_slots(server: Server) -> set[int]:
    """The slots the load-once parents forked, which answer the batches."""
    return {
        pid
        for parent in worker_parents(server)
        for pid, state in children_of(parent).items()
        if state != "Z"
    }


def worker_pids(server: Server) -> set[int]:
    return worker_parents(server) | worker_slots(server)


def assert_nothing_left(server: Server, bundle: Path) -> None:
    """No run folder, no process but the live workers, no zombie child of the server."""
    deadline = time.monotonic() + 10
    while True:
        tmp = bundle / "state" / "runs"
        # run folders are reused: only their files must be gone (workers' stay while they live)
        leftovers = run_leftovers(tmp)
        workers = worker_pids(server)
        others = {
            pid: cmdline
            for pid, cmdline in processes_of(server).items()
            if pid != server.pid and pid not in workers
        }
        zombies = [
            pid
            for parent in (server.pid, *worker_parents(server))
            for pid, state in children_of(parent).items()
            if state == "Z"
        ]
        if not (leftovers or others or zombies) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert leftovers == []
    assert others == {}
    assert zombies == []


def assert_still_serving(server: Server) -> None:
    ok = post(server, "ok", ["abc", "hello"])
    assert ok.status_code == 200, ok.text
    assert ok.json() == [{"length": 3}, {"length": 5}]
    live = post(server, "live", ["abcd"])
    assert live.status_code == 200, live.text
    assert live.json() == [{"length": 4}]


def test_a_crashing_script_is_a_clean_502_with_the_detail_in_the_log(
    server: Server, bundle: Path
) -> None:
    response = post(server, "crash", ["abc", "hello"])
    detail = clean_error(server, response, 502, bundle)
    # The caller learns what failed, without paths or the secret...
    assert "crash exited with code 1" in detail
    assert "PermissionError: cannot read weights.bin (token [redacted])" in detail
    # ...and the log keeps all of it under the same request id.
    request_id = response.headers["x-request-id"]
    logged = server.log[server.log.index(f"crash failed [request id {request_id}]") :]
    assert f"{bundle}/model/framework/../checkpoints/weights.bin" in logged
    assert_nothing_left(server, bundle)
    assert_still_serving(server)


def test_a_hanging_script_is_a_504_and_its_processes_are_killed(
    server: Server, bundle: Path
) -> None:
    response = post(server, "hang", ["abc"])
    assert "did not finish within 3 s" in clean_error(server, response, 504, bundle)
    request_id = response.headers["x-request-id"]
    assert f"hang timed out [request id {request_id}]" in server.log
    assert_nothing_left(server, bundle)  # hang.sh and both of its sleepers are gone
    assert not [c for c in processes_of(server).values() if "code/sleeper.py" in c]
    assert_still_serving(server)


def test_a_script_writing_garbage_is_a_clean_502(server: Server, bundle: Path) -> None:
    response = post(server, "garbage", ["abc", "hello"])
    clean_error(server, response, 502, bundle)
    assert_nothing_left(server, bundle)
    assert_still_serving(server)


def test_a_script_writing_too_few_rows_is_a_clean_502(server: Server, bundle: Path) -> None:
    response = post(server, "short", ["abc", "hello"])
    assert "wrote 1 rows for 2 inputs" in clean_error(server, response, 502, bundle)
    assert_nothing_left(server, bundle)
    assert_still_serving(server)


def test_an_input_that_makes_the_model_raise_gets_a_null_row_and_a_clean_reason(
    server: Server, bundle: Path
) -> None:
    response = post(server, "live", ["raise", "abc"], with_meta="true")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["result"] == [{"length": None}, {"length": 3}]
    (failed,) = body["meta"]["failed"]
    assert failed["index"] == 0 and failed["input"] == "raise"
    assert failed["reason"] == "FileNotFoundError: no such file: weights.bin"
    assert response.headers["x-failed-rows"] == "1"
    assert_nothing_left(server, bundle)
    assert_still_serving(server)


def test_a_model_printing_to_stdout_does_not_break_its_worker(server: Server, bundle: Path) -> None:
    response = post(server, "live", ["print", "abc"])
    assert response.status_code == 200, response.text
    assert response.json() == [{"length": 5}, {"length": 3}]
    assert_nothing_left(server, bundle)
    assert_still_serving(server)


def test_an_input_that_kills_its_worker_gets_a_null_row_and_the_rest_are_answered(
    server: Server, bundle: Path
) -> None:
    parents, before = worker_parents(server), worker_slots(server)
    response = post(server, "live", ["kill", "abc"], with_meta="true")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["result"] == [{"length": None}, {"length": 3}]
    (failed,) = body["meta"]["failed"]
    assert failed["input"] == "kill" and failed["reason"]
    assert "Traceback" not in response.text and str(bundle) not in response.text
    assert_still_serving(server)
    assert_nothing_left(server, bundle)
    # the dead slot was replaced by a fork of its loaded parent, which did not load again
    after = worker_slots(server)
    assert before - after and len(after) == len(before)
    assert worker_parents(server) == parents


def test_a_worker_killed_mid_request_is_replaced_and_the_request_answered(
    server: Server, bundle: Path
) -> None:
    answers: list[httpx.Response] = []
    seen = len(re.findall(r"slow input in worker (\d+)", server.log))
    request = threading.Thread(target=lambda: answers.append(post(server, "live", ["slow"])))
    request.start()
    deadline = time.monotonic() + 30
    while len(holders := re.findall(r"slow input in worker (\d+)", server.log)) <= seen:
        assert time.monotonic() < deadline, server.log
        time.sleep(0.02)
    victim = int(holders[seen])
    os.kill(victim, signal.SIGKILL)
    request.join(60)
    (response,) = answers
    # The pool retries the batch once on a fresh worker, so the caller still gets its answer.
    assert response.status_code == 200, response.text
    assert response.json() == [{"length": 4}]
    # reaped, not a zombie: neither the server's child nor a forked slot of a worker parent
    assert victim not in children_of(server.pid)
    assert all(victim not in children_of(parent) for parent in worker_parents(server))
    assert_still_serving(server)
    assert_nothing_left(server, bundle)


def test_stopping_the_server_mid_run_leaves_no_process_behind(faults_repository: Path) -> None:
    bundle = bundle_of(faults_repository)
    with serve(faults_repository, *ARGS, env=ENV) as running:
        wait_ready(running.url)
        busy = threading.Thread(target=lambda: post(running, "hang", ["abc"]), daemon=True)
        busy.start()
        deadline = time.monotonic() + 30
        while not [c for c in processes_of(running).values() if "code/sleeper.py" in c]:
            assert time.monotonic() < deadline
            time.sleep(0.02)
    # serve() sent SIGTERM and waited for the server to end (then killed its process group,
    # which holds neither the workers nor the scripts: each starts in its own session).
    deadline = time.monotonic() + 10
    while processes_of(running) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert processes_of(running) == {}
    # run folders carry their server's pid: none of this server's is left (the module's
    # other server is still running, with its workers' folders)
    tmp = bundle / "state" / "runs"
    assert [p.name for p in tmp.iterdir() if f".{running.pid}." in p.name] == []
