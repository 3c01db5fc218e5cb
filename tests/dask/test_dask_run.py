"""`ersilia_pack run --dask ADDRESS` on a real Dask cluster: a `dask scheduler` and two
`dask worker` processes on 127.0.0.1, each loading the sleepy fixture's engine once.

Dask runs only in those processes and in the `ersilia_pack run` process, never in this one,
so pytest's filterwarnings=error has no Dask warning to see and none is filtered here.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import signal
import subprocess
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import console_script

ROWS = 6000
CHUNK = 250
THREADS = 2  # chunks each Dask worker computes at once
pytestmark = pytest.mark.slow


class Cluster:
    """A scheduler and named workers, each in a session of its own; ``kill`` is ``kill -9`` of a
    worker's whole process group, its model processes included."""

    def __init__(self, folder: Path, counter: Path) -> None:
        self.folder = folder
        self.counter = counter
        self.scheduler_file = folder / "scheduler.json"
        self.processes: dict[str, subprocess.Popen[bytes]] = {}

    def _start(self, name: str, *args: str, env: dict[str, str] | None = None) -> None:
        log = (self.folder / f"{name}.log").open("wb")
        self.processes[name] = subprocess.Popen(
            [console_script("dask"), *args, "--scheduler-file", str(self.scheduler_file)],
            cwd=self.folder,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **(env or {})},
            start_new_session=True,
        )
        log.close()

    def start(self, workers: tuple[str, ...]) -> str:
        self._start("scheduler", "scheduler", "--host", "127.0.0.1", "--port", "0",
                    "--no-dashboard")  # fmt: skip
        _wait(self.scheduler_file.exists, "the scheduler file")
        address = str(json.loads(self.scheduler_file.read_text())["address"])
        for name in workers:
            env = {
                "SLEEPY_SECONDS": "0.005",
                "SLEEPY_COUNTER": str(self.counter),
                "SLEEPY_REPLICA": name,
            }
            self._start(name, "worker", "--host", "127.0.0.1", "--nthreads", str(THREADS),
                        "--no-nanny", "--no-dashboard", "--name", name,
                        "--local-directory", str(self.folder / name), env=env)  # fmt: skip
        for name in workers:
            _wait(lambda name=name: "Registered to:" in self.log(name), f"worker {name}")
        return address

    def log(self, name: str) -> str:
        return (self.folder / f"{name}.log").read_text(errors="replace")

    def kill(self, name: str) -> None:
        process = self.processes[name]
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)

    def stop(self) -> None:
        for name in self.processes:
            self.kill(name)


def _wait(done: Callable[[], bool], what: str, within: float = 60) -> None:
    deadline = time.monotonic() + within
    while not done():
        assert time.monotonic() < deadline, f"no {what} within {within} s"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Cluster]]:
    folder = tmp_path_factory.mktemp("dask")
    cluster = Cluster(folder, folder / "computed.txt")
    try:
        yield cluster.start(("A", "B")), cluster
    finally:
        cluster.stop()


def _inputs(folder: Path, prefix: str) -> tuple[Path, list[str]]:
    inputs = [f"{prefix}-{i:05d}" for i in range(ROWS)]
    path = folder / f"{prefix}.txt"
    path.write_text("\n".join(inputs) + "\n")
    return path, inputs


def _start_run(bundle: Path, address: str, source: Path, out: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            console_script("ersilia_pack"),
            "run",
            "--repository_dir",
            str(bundle),
            "--dask",
            address,
            "-i",
            str(source),
            "-o",
            str(out),
            "--chunk-size",
            str(CHUNK),
            "--workers",
            str(THREADS),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _rows_done(out: Path) -> int:
    try:
        return int(json.loads(out.with_name(out.name + ".state.json").read_text())["rows_done"])
    except (FileNotFoundError, ValueError, KeyError):
        return 0


def _check_output(out: Path, inputs: list[str]) -> None:
    """Every row, once, in input order, with the model's values."""
    with out.open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == ["input", "length", "reversed"]
    assert [row[0] for row in rows[1:]] == inputs
    assert all(row[1:] == [str(len(row[0])), row[0][::-1]] for row in rows[1:])


def _computed(counter: Path, prefix: str) -> Counter[tuple[str, str]]:
    """(worker, input) -> times the model computed it, for this test's inputs."""
    lines = counter.read_text().splitlines() if counter.exists() else []
    pairs = (tuple(line.split(" ", 1)) for line in lines)
    return Counter((worker, text) for worker, text in pairs if text.startswith(prefix))


def test_a_run_stopped_and_run_again_computes_each_row_once(
    packed: Callable[..., Path], cluster: tuple[str, Cluster], tmp_path: Path
) -> None:
    address, nodes = cluster
    bundle = packed("sleepy-model")
    source, inputs = _inputs(tmp_path, "stop")
    out = tmp_path / "out.csv"
    run = _start_run(bundle, address, source, out)
    try:
        _wait(lambda: _rows_done(out) >= 1000 or run.poll() is not None, "1000 rows")
        run.send_signal(signal.SIGINT)
        _, stderr = run.communicate(timeout=60)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, signal.SIGKILL)
    assert run.returncode == 130, stderr
    assert "run the same command again" in stderr
    stopped_at = _rows_done(out)
    assert 1000 <= stopped_at < ROWS
    assert not out.exists()

    again = _start_run(bundle, address, source, out)
    stdout, stderr = again.communicate(timeout=120)
    assert again.returncode == 0, stderr
    assert f"wrote 6,000 rows to {out} (0 without values, {stopped_at:,} of them" in stdout
    _check_output(out, inputs)
    # The chunks in flight at the stop were finished and recorded: nothing computed twice.
    computed = _computed(nodes.counter, "stop")
    assert sorted(text for _, text in computed.elements()) == inputs
    assert {worker for worker, _ in computed} == {"A", "B"}


def test_a_worker_killed_mid_run_costs_only_its_chunks(
    packed: Callable[..., Path], cluster: tuple[str, Cluster], tmp_path: Path
) -> None:
    address, nodes = cluster
    bundle = packed("sleepy-model")
    source, inputs = _inputs(tmp_path, "kill")
    out = tmp_path / "out.csv"
    run = _start_run(bundle, address, source, out)
    try:
        _wait(lambda: _rows_done(out) >= 1000 or run.poll() is not None, "1000 rows")
        assert run.poll() is None
        at_kill = _rows_done(out)
        nodes.kill("A")
        by_a = sum(
            n for (worker, _), n in _computed(nodes.counter, "kill").items() if worker == "A"
        )
        stdout, stderr = run.communicate(timeout=120)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(run.pid, signal.SIGKILL)
    assert at_kill < ROWS - 4 * CHUNK  # killed well before the end
    assert by_a > 0  # A had its share of the run when it died
    assert run.returncode == 0, stderr
    assert "wrote 6,000 rows" in stdout
    _check_output(out, inputs)

    computed = _computed(nodes.counter, "kill")
    by_worker = Counter(worker for worker, _ in computed.elements())
    assert set(by_worker) == {"A", "B"}
    assert {text for _, text in computed} == set(inputs)
    # Rows computed twice: only those of the chunks A was computing when it died (results
    # are taken from a worker as soon as they are done), which B computed again.
    again = sum(computed.values()) - ROWS
    assert 0 <= again <= THREADS * CHUNK
