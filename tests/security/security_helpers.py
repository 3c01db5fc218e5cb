"""Real packs, real servers and /proc scans for the security suite.

Each server is the real ``ersilia_serve`` on a free port of 127.0.0.1, in its own session;
its stdout and stderr (uvicorn's access log and our own log) are kept, so tests can check
what the server wrote as well as what it answered. The whole process group is killed on the
way out, whatever happened.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "tests" / "fixtures"
DEMO = ROOT / "examples" / "eos-demo"
UVICORN_LINE = re.compile(r"Uvicorn running on (http://\S+)")


def console_script(name: str) -> str:
    """A console script of this package, beside the running interpreter when it is there."""
    beside = Path(sys.executable).parent / name
    return str(beside) if beside.is_file() else name


def pack_cli(model_dir: Path, eos: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the real ``ersilia_pack --system`` on a model directory."""
    return subprocess.run(
        [
            console_script("ersilia_pack"),
            *("--model_dir", str(model_dir), "--system", "--eos", str(eos)),
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def pack_repository(model_dir: Path, eos: Path, *args: str) -> Path:
    """Pack and return ``$EOS/repository/$MODEL_ID``; fail the test with the pack's output."""
    done = pack_cli(model_dir, eos, *args)
    assert done.returncode == 0, done.stdout + done.stderr
    (repository,) = (eos / "repository").iterdir()
    return repository


MARKER = "EP_TEST_SERVER_MARKER"


@dataclass
class Server:
    """A running ``ersilia_serve``: its URL, its process, and every line it printed.

    ``marker`` is the value of ``EP_TEST_SERVER_MARKER`` in its environment, which every
    process it starts inherits: :func:`processes_of` finds them even once they are orphans.
    """

    url: str
    process: subprocess.Popen[str]
    marker: str
    lines: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def wait_for_log(self, text: str, within: float = 10) -> bool:
        """Whether ``text`` shows up in the server's output within ``within`` seconds."""
        deadline = time.monotonic() + within
        while text not in self.log:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return True


@contextlib.contextmanager
def serve(
    repository: Path,
    *args: str,
    env: Mapping[str, str] | None = None,
    startup_timeout: float = 90,
) -> Iterator[Server]:
    """Serve ``repository`` with the real console script; yield once uvicorn says where."""
    marker = secrets.token_hex(8)
    process = subprocess.Popen(
        [
            console_script("ersilia_serve"),
            *("--repository_dir", str(repository), "--port", "0"),
            *args,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        errors="replace",
        start_new_session=True,
        env={**os.environ, **(env or {}), MARKER: marker},
    )
    server = Server(url="", process=process, marker=marker)
    started = threading.Event()

    def drain() -> None:
        # Read for the server's whole life so a full pipe never blocks its logging.
        assert process.stdout is not None
        for line in process.stdout:
            server.lines.append(line)
            match = UVICORN_LINE.search(line)
            if match and not started.is_set():
                server.url = match.group(1)
                started.set()
        started.set()

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        started.wait(startup_timeout)
        if not server.url:
            raise AssertionError(f"ersilia_serve did not start; its output:\n{server.log}")
        yield server
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=15)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        reader.join(timeout=10)
        if process.stdout is not None:
            process.stdout.close()


def wait_ready(url: str, headers: Mapping[str, str] | None = None, within: float = 60) -> None:
    """Poll ``/readyz`` until every API can answer."""
    deadline = time.monotonic() + within
    while True:
        status = httpx.get(f"{url}/readyz", headers=dict(headers or {}), timeout=10).status_code
        if status == 200:
            return
        assert time.monotonic() < deadline, f"/readyz still answers {status}"
        time.sleep(0.1)


def processes_mentioning(marker: str) -> dict[int, str]:
    """Live processes whose command line contains ``marker``: pid to command line."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            found[int(entry.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace")
    return found


def processes_of(server: Server) -> dict[int, str]:
    """Live processes started by ``server`` (or the server itself): pid to command line."""
    tag = f"{MARKER}={server.marker}".encode()
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if tag not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        found[int(entry.name)] = cmdline.replace(b"\0", b" ").decode(errors="replace")
    return found


def children_of(pid: int) -> dict[int, str]:
    """Direct children of ``pid``: pid to state letter (``Z`` is a zombie nobody reaped)."""
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        # The command name is in parentheses and may hold spaces; fields follow its end.
        state, ppid = stat[stat.rindex(")") + 2 :].split()[:2]
        if int(ppid) == pid:
            found[int(entry.name)] = state
    return found


@contextlib.contextmanager
def redis_server(folder: Path) -> Iterator[str]:
    """A throwaway ``redis-server`` on a Unix socket in ``folder`` (no persistence); its URL."""
    executable = shutil.which("redis-server")
    assert executable, "redis-server is not on PATH: apt-get install redis-server"
    socket_path = folder / "redis.sock"
    process = subprocess.Popen(
        [executable, "--port", "0", "--unixsocket", str(socket_path), "--save", ""],
        cwd=folder,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 20
        while not socket_path.exists():
            assert process.poll() is None, f"redis-server exited with {process.returncode}"
            assert time.monotonic() < deadline, "redis-server made no socket within 20 s"
            time.sleep(0.05)
        yield f"unix://{socket_path}?db=0"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
