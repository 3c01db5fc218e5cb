"""Helpers shared by the test suites: file trees, packed fixtures, and a served model.

Import them as ``from helpers import ...`` (pytest puts ``tests/`` on ``sys.path`` because of
``tests/conftest.py``).
"""

from __future__ import annotations

import contextlib
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path

from fastapi.testclient import TestClient

from ersilia_pack.pack import pack
from ersilia_pack.runtime.bundle.loader import create_bundle_app
from ersilia_pack.runtime.settings import ServeSettings

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
DEMO_DIR = ROOT / "examples" / "eos-demo"
# The shared data set (SMILES and molecular weights) lives beside the project, never inside
# it: ../shared/data relative to the project root, or the folder ERSILIA_PACK_TEST_DATA names.
DATA_DIR = Path(os.environ.get("ERSILIA_PACK_TEST_DATA") or ROOT.parent / "shared" / "data")
DATA = DATA_DIR / "smiles-50k-molweight.csv"
UVICORN_LINE = re.compile(r"Uvicorn running on (http://\S+)")


def write_tree(root: Path, files: Mapping[str, str]) -> Path:
    """Write ``{relative path: text}`` under ``root`` (an inline model directory) and return it."""
    for relative, text in files.items():
        path = root / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root


def copy_fixture(name: str, target: Path) -> Path:
    """A writable copy of ``tests/fixtures/<name>`` at ``target``."""
    shutil.copytree(FIXTURES / name, target)
    return target


def pack_fixture(name: str, repository_root: Path, *, check: bool = True) -> Path:
    """Pack ``tests/fixtures/<name>`` with the system backend; the new bundle's folder.

    ``check=False`` skips the pack-time example run, for fixtures built to fail or hang.
    """
    result = pack(FIXTURES / name, backend="system", repository_root=repository_root, check=check)
    return result.bundle_dir


def app_client(
    bundle_dir: Path, *, workers: int = 2, timeout: float = 60, **settings: object
) -> TestClient:
    """A TestClient of a bundle's generated app; use it with ``with`` so start-up runs.

    Settings are explicit (not read from ERSILIA_PACK_* variables) so tests do not depend on
    the environment they run in.
    """
    app = create_bundle_app(
        bundle_dir,
        ServeSettings.model_validate({"workers": workers, "timeout": timeout, **settings}),
    )
    return TestClient(app)


def wait_ready(client: TestClient, within: float = 60) -> dict[str, object]:
    """Poll ``GET /readyz`` until it answers 200 (at most ``within`` seconds); its body."""
    deadline = time.monotonic() + within
    while True:
        response = client.get("/readyz")
        if response.status_code == 200 or time.monotonic() > deadline:
            assert response.status_code == 200, response.text
            body: dict[str, object] = response.json()
            return body
        time.sleep(0.05)


def console_script(name: str) -> str:
    """The path of one of this package's console scripts, beside the running interpreter."""
    beside = Path(sys.executable).parent / name
    if beside.is_file():
        return str(beside)
    found = shutil.which(name)
    if found is None:
        raise FileNotFoundError(f"console script {name} is not installed: pip install -e .")
    return found


def run_command(
    name: str, *args: str | Path, timeout: float = 240, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a console script (``ersilia_pack`` ...) to the end, capturing its output."""
    return subprocess.run(
        [console_script(name), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
        check=False,
    )


class ServerStartError(AssertionError):
    """``ersilia_serve`` exited, or printed no uvicorn line, before it was serving."""


@contextlib.contextmanager
def server_process(
    argv: list[str],
    *,
    env: Mapping[str, str] | None = None,
    startup_timeout: float = 60,
    ready_line: re.Pattern[str] = UVICORN_LINE,
) -> Iterator[str]:
    """Start a server command in its own session; yield the URL of its uvicorn line.

    The URL comes from the first stderr line matching ``ready_line``, as the Ersilia client
    finds it. The whole process group is stopped on the way out, whatever happened inside.
    """
    process = subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        errors="replace",
        start_new_session=True,
        env={**os.environ, **(env or {})},
    )
    lines: queue.Queue[str | None] = queue.Queue()
    seen: list[str] = []

    def drain() -> None:
        # Keep reading for the server's whole life so a full pipe never blocks its logging.
        assert process.stderr is not None
        for line in process.stderr:
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    name = Path(argv[0]).name
    try:
        deadline = time.monotonic() + startup_timeout
        url = None
        while url is None:
            try:
                line = lines.get(timeout=max(deadline - time.monotonic(), 0))
            except queue.Empty:
                line = ""
                problem = f"printed no uvicorn line within {startup_timeout:g} s"
            else:
                problem = "" if line is not None else f"exited with code {process.wait(10)}"
            if problem:
                raise ServerStartError(f"{name} {problem}; its output:\n" + "".join(seen))
            assert line is not None
            seen.append(line)
            match = ready_line.search(line)
            if match:
                url = match.group(1)
        yield url
    finally:
        # A polite stop first, so the server shuts its workers down; then nothing survives.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=10)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        reader.join(timeout=10)
        if process.stderr is not None:
            process.stderr.close()


@contextlib.contextmanager
def served(
    repository_dir: Path,
    *args: str,
    command: str = "ersilia_serve",
    path_option: str = "--repository_dir",
    startup_timeout: float = 60,
    env: Mapping[str, str] | None = None,
) -> Iterator[str]:
    """Serve a packed model with the real console script on a free port; yield its base URL."""
    argv = [console_script(command), path_option, str(repository_dir), "--port", "0", *args]
    with server_process(argv, env=env, startup_timeout=startup_timeout) as url:
        yield url


def processes_mentioning(marker: str) -> list[int]:
    """Ids of live processes whose command line contains ``marker`` (read from /proc)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if marker.encode() in cmdline:
            found.append(int(entry.name))
    return found


def wait_until_gone(marker: str, within: float = 10) -> list[int]:
    """Wait (at most ``within`` seconds) for processes mentioning ``marker`` to end; leftovers."""
    deadline = time.monotonic() + within
    while True:
        left = processes_mentioning(marker)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.05)


def run_leftovers(runs: Path, *, skip: str = "-worker.") -> list[str]:
    """Files that runs left in a bundle's run folders (``state/runs``).

    Run folders are emptied after each run and reused, so the folders themselves stay while
    the server runs; what must not stay is anything in them beyond the links of their working
    directory and an empty ``tmp/`` (a link to the run's TMPDIR). Folders whose name
    contains ``skip`` (a load-once worker's, which lives as long as the worker) are not
    looked at.
    """
    found: list[str] = []
    if not runs.is_dir():
        return found
    for folder in runs.iterdir():
        if skip and skip in folder.name:
            continue
        for path in sorted(folder.rglob("*")):
            if path.is_symlink() or any(p.is_symlink() for p in path.parents):
                continue
            relative = path.relative_to(folder)
            if path.is_dir() and str(relative) in {"tmp", "model", "model/framework"}:
                continue
            found.append(f"{folder.name}/{relative}")
        # the run's TMPDIR is a short folder elsewhere that ``tmp`` links to
        tmp = folder / "tmp"
        if tmp.is_symlink() and tmp.is_dir():
            found.extend(f"{folder.name}/tmp/{p.relative_to(tmp)}" for p in sorted(tmp.rglob("*")))
    return found
