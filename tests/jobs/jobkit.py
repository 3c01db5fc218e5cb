"""Helpers of the job and cache tests: a counting model, real servers, Redis, polling.

Import as ``from jobkit import ...`` (pytest puts ``tests/jobs`` on ``sys.path``).
"""

from __future__ import annotations

import contextlib
import csv
import io
import math
import os
import queue
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

import httpx
from helpers import DATA, UVICORN_LINE, console_script, run_leftovers, write_tree

T = TypeVar("T")


def read_data() -> tuple[list[str], list[float]]:
    """The SMILES of the shared data set and their molecular weights."""
    with DATA.open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    return [row["input"] for row in rows], [float(row["mol_weight"]) for row in rows]


_MODEL_SCRIPT = '''\
"""Length and upper-case form of each input; "bad" gets an empty row (a null row).

JOBS_TEST_COUNTER: a file that gets one line per run, the number of inputs it computed.
JOBS_TEST_GATE: a file that must exist before a run answers (lets a test hold a job).
JOBS_TEST_BROKEN: when set, every run fails (a broken model).
JOBS_TEST_FAILURES: a file holding a number: that many runs fail, then the model recovers.
An input starting with "hang" makes its run wait a minute (longer than a test's timeout).
"""

import csv
import os
import sys
import time

if os.environ.get("JOBS_TEST_BROKEN"):
    sys.exit("the model is broken")
failures = os.environ.get("JOBS_TEST_FAILURES")
if failures and os.path.exists(failures):
    with open(failures) as handle:
        left = int(handle.read() or 0)
    if left > 0:
        with open(failures, "w") as handle:
            handle.write(str(left - 1))
        sys.exit("out of memory, for now")
input_file, output_file = sys.argv[1], sys.argv[2]
with open(input_file, newline="") as handle:
    inputs = [row[0] for row in list(csv.reader(handle))[1:]]
gate = os.environ.get("JOBS_TEST_GATE")
if gate:
    deadline = time.time() + 120
    while not os.path.exists(gate) and time.time() < deadline:
        time.sleep(0.02)
if any(text.startswith("hang") for text in inputs):
    time.sleep(60)
counter = os.environ.get("JOBS_TEST_COUNTER")
if counter:
    with open(counter, "a") as handle:
        handle.write(f"{len(inputs)}\\n")
with open(output_file, "w", newline="") as handle:
    writer = csv.writer(handle)
    writer.writerow(["length", "upper"])
    for text in inputs:
        writer.writerow(["", ""] if text == "bad" else [len(text), text.upper()])
'''


def counting_model(root: Path, **card: str) -> Path:
    """A tiny model directory whose runs can be counted and held; ``card`` adds metadata."""
    metadata = {
        "Identifier": "jobs-counter",
        "Slug": "counting-model",
        "Status": "Ready",
        "Title": "Length and upper-case form of inputs, counting its runs",
        "Description": "A test fixture for jobs and the result cache.",
        "Input": "\n- Text",
        "Output": "\n- Value",
        "Output Consistency": "Fixed",
        **card,
    }
    return write_tree(
        root,
        {
            "metadata.yml": "".join(f"{key}: {value}\n" for key, value in metadata.items()),
            "install.sh": 'echo "nothing to install"\n',
            "model/framework/run.sh": "python $1/code/model.py $2 $3\n",
            "model/framework/code/model.py": _MODEL_SCRIPT,
            "model/framework/columns/run_columns.csv": (
                "name,type,direction,description\n"
                "length,integer,,number of characters\n"
                "upper,string,,the input in upper case\n"
            ),
            "model/framework/examples/run_input.csv": "input\nCCO\nhello\n",
            "model/framework/examples/run_output.csv": "length,upper\n3,CCO\n5,HELLO\n",
        },
    )


def computed_in(counter: Path) -> int:
    """How many inputs the model computed in all its runs, from the counter file.

    (How they were split into runs is the engine's business, so only the total is counted.)
    """
    if not counter.exists():
        return 0
    return sum(int(line) for line in counter.read_text().split())


def wait_for(check: Callable[[], T | None], *, within: float, what: str) -> T:
    """Poll ``check`` until it returns something (a deadline, not a timing assertion)."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value is not None:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what} after {within:g} s")
        time.sleep(0.05)


def wait_runs_ended(bundle: Path) -> None:
    """Wait until no script run of the bundle is in flight (each has files in state/runs).

    A run still in flight when a test's app stops is cancelled mid-way; waiting keeps tests
    about what they test.
    """
    runs = bundle / "state" / "runs"
    wait_for(lambda: not run_leftovers(runs) or None, within=60, what="model runs to end")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


@contextlib.contextmanager
def redis_server(folder: Path) -> Iterator[str]:
    """A throwaway ``redis-server`` on a free port (no persistence); its URL."""
    executable = shutil.which("redis-server")
    assert executable, "redis-server is not on PATH: apt-get install redis-server"
    port = free_port()
    process = subprocess.Popen(
        [
            executable,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        cwd=folder,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        import redis

        client = redis.Redis(port=port)

        def answers() -> bool | None:
            with contextlib.suppress(redis.ConnectionError):
                return bool(client.ping()) or None
            assert process.poll() is None, f"redis-server exited with {process.returncode}"
            return None

        wait_for(answers, within=20, what="redis-server to answer")
        client.close()
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)


class Server:
    """``ersilia_serve`` as a real process in its own session, killed (group and all) at exit.

    ``kill()`` is ``kill -9`` of the whole process group: no shutdown code runs.
    """

    def __init__(self, repository_dir: Path, *args: str, env: Mapping[str, str] | None = None):
        self.command = [
            console_script("ersilia_serve"),
            "--repository_dir",
            str(repository_dir),
            "--port",
            "0",
            *args,
        ]
        self.env = {**os.environ, **(env or {})}
        self.url = ""
        self.output: list[str] = []
        self._process: subprocess.Popen[str] | None = None
        self._reader: threading.Thread | None = None

    def __enter__(self) -> Server:
        self._process = process = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            errors="replace",
            start_new_session=True,
            env=self.env,
        )
        lines: queue.Queue[str | None] = queue.Queue()

        def drain() -> None:  # read for the server's whole life, so its pipe never fills
            assert process.stderr is not None
            for line in process.stderr:
                self.output.append(line)
                lines.put(line)
            lines.put(None)

        self._reader = threading.Thread(target=drain, daemon=True)
        self._reader.start()
        try:
            deadline = time.monotonic() + 60
            while not self.url:
                try:
                    line = lines.get(timeout=max(deadline - time.monotonic(), 0.01))
                except queue.Empty:
                    line = None
                if line is None:
                    raise AssertionError("ersilia_serve did not start:\n" + "".join(self.output))
                match = UVICORN_LINE.search(line)
                if match:
                    self.url = match.group(1)
        except BaseException:
            self._stop(signal.SIGKILL)
            raise
        return self

    def kill(self) -> None:
        """SIGKILL the server's whole process group, as a crash or ``kill -9`` would."""
        self._stop(signal.SIGKILL)

    def _stop(self, sig: int) -> None:
        if self._process is None or self._process.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self._process.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self._process.wait(timeout=15)

    def __exit__(self, *exc: object) -> None:
        self._stop(signal.SIGTERM)
        self._stop(signal.SIGKILL)
        if self._process is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait(timeout=10)
        if self._reader is not None:
            self._reader.join(timeout=10)
        if self._process is not None and self._process.stderr is not None:
            self._process.stderr.close()

    def get(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.get(self.url + path, timeout=120, **kwargs)

    def post(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.post(self.url + path, timeout=300, **kwargs)

    def delete(self, path: str, **kwargs: Any) -> httpx.Response:
        return httpx.delete(self.url + path, timeout=120, **kwargs)

    def status(self, job_id: str) -> dict[str, Any]:
        response = self.get(f"/job/status/{job_id}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body


# Demo jobs: chunks of CHUNK rows, one model run each. Three workers on a small machine give a
# job two background slots and keep one for interactive requests.
CHUNK = 2500
OPTIONS = ("--workers", "3", "--batch-size", str(CHUNK))
ENV = {"ERSILIA_PACK_JOB_CHUNK_SIZE": str(CHUNK)}


def progress(server: Server, job_id: str, *, at_least: int) -> dict[str, Any] | None:
    """The job's status once ``at_least`` rows are done (or it stopped running), else None."""
    status = server.status(job_id)
    return status if status["done"] >= at_least or status["state"] != "running" else None


def final(server: Server, job_id: str) -> dict[str, Any] | None:
    """The job's status once it is done, failed or cancelled, else None."""
    status = server.status(job_id)
    return status if status["state"] not in ("queued", "running") else None


def check_result(server: Server, job_id: str, inputs: list[str], weights: list[float]) -> None:
    """Every row once, in input order, with the molecular weight of the data set."""
    records = server.get(f"/job/result/{job_id}").json()
    table = list(csv.reader(io.StringIO(server.get(f"/job/result/{job_id}?format=csv").text)))

    assert len(records) == len(inputs)
    wrong = [
        i
        for i, (row, weight) in enumerate(zip(records, weights))
        if row["mol_weight"] is None or not math.isclose(row["mol_weight"], weight, rel_tol=1e-6)
    ]
    assert wrong == [], f"{len(wrong)} wrong weights, e.g. row {wrong[0]}"
    assert table[0][:2] == ["input", "mol_weight"]
    assert [row[0] for row in table[1:]] == inputs


# Jobs of the sleepy fixture model (tests/fixtures/sleepy-model): each input waits a few
# milliseconds, so replicas scale on two cores. Two workers give each replica one job lane.
SLEEPY_CHUNK = 100
# The counter file records every computation: no start-up self-check adds the example's.
SLEEPY_OPTIONS = ("--workers", "2", "--no-self-check")


def sleepy_inputs(count: int) -> list[str]:
    """Distinct inputs, so each computation of one is seen in the counter file."""
    return [f"item-{i:05d}" for i in range(count)]


def sleepy_env(redis_url: str, counter: Path, replica: str) -> dict[str, str]:
    """The environment of one sleepy replica on a shared Redis, counting into ``counter``."""
    return {
        "ERSILIA_PACK_REDIS_URL": redis_url,
        "ERSILIA_PACK_JOB_CHUNK_SIZE": str(SLEEPY_CHUNK),
        "SLEEPY_COUNTER": str(counter),
        "SLEEPY_REPLICA": replica,
    }


def computations(counter: Path) -> list[tuple[str, str]]:
    """(replica, input) for each input the sleepy model computed, in the order it did."""
    if not counter.exists():
        return []
    lines = counter.read_text().splitlines()
    return [(replica, text) for replica, _, text in (line.partition(" ") for line in lines)]


def check_sleepy_result(server: Server, job_id: str, inputs: list[str]) -> None:
    """Every row once, in input order, with the length and the reverse of its input."""
    records = server.get(f"/job/result/{job_id}").json()
    assert len(records) == len(inputs)
    wrong = [
        i
        for i, (row, text) in enumerate(zip(records, inputs))
        if row != {"length": len(text), "reversed": text[::-1]}
    ]
    assert wrong == [], f"{len(wrong)} wrong rows, e.g. row {wrong[0]}: {records[wrong[0]]}"
