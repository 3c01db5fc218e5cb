"""Warm runner: pre-import a legacy script's imports, then fork one run per job.

Copied into each bundle as ``app/warm.py``; the model it serves and the version of ersilia_pack
that copied it are in the bundle's ``manifest.json``, beside ``app/``, which its usage line
reads. For an API whose script is `python <script>.py $2 $3`,
this process imports the script's top-level imports once and keeps one child forked ahead;
each job is handed to that child, which runs the script as __main__ with the job's argv, so a
run costs no interpreter start and no imports. Every run, and the warm-up run, happens in a
working directory and TMPDIR of its own that the server made. It runs on the model
environment's interpreter with the standard library and the frames of ersilia_framing.py.

Two shapes, chosen by the server:

- ``warm.py SCRIPT --forked SLOTS [WARM-UP ARGS]`` (the default): this one warm process serves
  every slot of the API. Jobs carry an ``id`` and several run at once, each in a forked child
  of its own process group; one child per slot is kept forked ahead. A ``{"cancel": id}``
  frame kills that child's group; ``{"pids": [...]}`` frames tell the server which children
  exist, so it can kill their groups if this process dies.
- ``warm.py SCRIPT [WARM-UP ARGS]`` (separate workers): one job at a time, frames without ids.
- ``warm.py SCRIPT --in-process [WARM-UP ARGS]``: one job at a time, frames without ids, each
  run in this process itself, one after the other. For scripts whose libraries cannot be used
  in a process forked after they were initialised (CUDA's rule; some OpenMP and MPI builds):
  this process imported them itself, so each run finds them ready. The server starts one
  such process per slot.
"""

# Annotations stay unevaluated: the model environment's interpreter may be as old as 3.7.
from __future__ import annotations

import ast
import contextlib
import ctypes
import gc
import importlib
import json
import os
import select
import signal
import struct
import sys
import tempfile
import traceback
import types
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any, NoReturn

if __package__:  # imported as ersilia_pack.model_side.warm: the linter, type checker, tests
    from .framing import FrameBuffer, bundle_usage, read_frame, write_frame
else:  # the bundle's copy, run as a script beside ersilia_framing.py
    from ersilia_framing import (  # type: ignore[no-redef]
        FrameBuffer,
        bundle_usage,
        read_frame,
        write_frame,
    )

# The bundle's manifest, beside its app/ folder (this file is app/warm.py).
MANIFEST = Path(__file__).resolve().parent.parent / "manifest.json"
USAGE = "usage: warm.py SCRIPT [--forked SLOTS | --in-process] [WARM-UP ARGS]"


def usage(manifest: Path = MANIFEST) -> str:
    """The usage text, naming the model this bundle serves."""
    return bundle_usage("Warm runner", USAGE, manifest)


def top_level_imports(script: str) -> list[str]:
    """Module names the script imports at its top level (including inside try blocks)."""
    tree = ast.parse(Path(script).read_text(encoding="utf-8", errors="replace"))
    names: list[str] = []
    nodes: list[ast.stmt] = list(tree.body)
    while nodes:
        node = nodes.pop(0)
        if isinstance(node, ast.Import):
            names.extend(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.append(node.module)
            names.extend(f"{node.module}.{alias.name}" for alias in node.names)
        elif isinstance(node, ast.Try):
            nodes[:0] = [*node.body, *node.orelse, *node.finalbody]
    return names


def preload(script: str) -> list[str]:
    """Import what the script imports; anything that fails is left for the run to import."""
    loaded = []
    for name in top_level_imports(script):
        # A failed preload only costs speed: the run imports it again and reports any error.
        with contextlib.suppress(BaseException):
            importlib.import_module(name)
            loaded.append(name)
    return loaded


def execute(code: types.CodeType, script: str, argv: list[str], cwd: str) -> int:
    """Run the compiled script as __main__ with argv in cwd; its exit code."""
    os.chdir(cwd)
    sys.argv = list(argv)
    sys.path[0] = str(Path(script).resolve().parent)
    # A real module in sys.modules, as `python script.py` makes: what the script pickles by
    # reference (a function it hands to a multiprocessing pool) is found there again.
    main = types.ModuleType("__main__")
    main.__file__ = script
    main.__dict__["__builtins__"] = __builtins__
    sys.modules["__main__"] = main
    try:
        exec(code, main.__dict__)
    except SystemExit as done:
        if done.code is None:
            return 0
        if isinstance(done.code, int):
            return done.code
        print(done.code, file=sys.stderr)
        return 1
    except BaseException:
        traceback.print_exc()
        return 1
    return 0


def hold_threads() -> None:
    """Numeric libraries imported before the fork keep to one thread in the child: a forked
    child of a process that ran a torch operation hangs on its next multi-threaded one."""
    torch = sys.modules.get("torch")
    if torch is not None:
        with contextlib.suppress(BaseException):
            torch.set_num_threads(1)


def enter_workspace(job: dict[str, Any]) -> None:
    """The job's own TMPDIR (and forget the one the warm process found)."""
    os.environ.update(job.get("env") or {})
    tempfile.tempdir = None


def run_job(job: dict[str, Any], code: types.CodeType, done: int) -> NoReturn:
    """In a forked child: run the job, report its exit code on `done`, exit; never returns."""
    status = 1
    try:
        enter_workspace(job)
        hold_threads()
        log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        status = execute(code, job["argv"][0], job["argv"], job["cwd"])
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(BaseException):
                stream.flush()
        # Reporting before exiting keeps the child's teardown off the request's path.
        with contextlib.suppress(BaseException):
            os.write(done, struct.pack(">i", status))
    os._exit(status)


def exit_code(status: int) -> int:
    """A waitpid status as an exit code (negative for a signal), as on Python 3.9+."""
    if os.WIFSIGNALED(status):
        return -os.WTERMSIG(status)
    return os.WEXITSTATUS(status)


def read_exact(fd: int, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = os.read(fd, size - len(data))
        if not chunk:
            break
        data += chunk
    return data


def read_all(fd: int) -> bytes:
    chunks: list[bytes] = []
    while True:
        chunk = os.read(fd, 65536)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)


def die_with_parent(parent: int) -> None:
    """Be killed when the parent dies (Linux), so no run outlives a parent killed with SIGKILL."""
    with contextlib.suppress(BaseException):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before the line above
        os._exit(1)


def fork_spare(
    channel: IO[bytes],
    code: types.CodeType,
    group: bool = False,
    inherited: Iterable[int] = (),
) -> tuple[int, int, int]:
    """Fork a child that waits on a pipe for its job, so the fork is off the request's path.

    Returns the child's pid, the pipe to send its job on, and the pipe it reports its exit
    code on. With ``group`` the child leads a process group of its own and dies with this
    process; ``inherited`` are pipes of other children it must not keep open.
    """
    job_read, job_write = os.pipe()
    done_read, done_write = os.pipe()
    parent = os.getpid()
    pid = os.fork()
    if pid == 0:
        if group:
            os.setpgid(0, 0)
            die_with_parent(parent)
        os.close(job_write)
        os.close(done_read)
        for fd in inherited:
            with contextlib.suppress(OSError):
                os.close(fd)
        channel.close()
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        data = read_all(job_read)
        if not data:
            os._exit(0)
        run_job(json.loads(data), code, done_write)
    if group:
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)  # also here, so no kill can come before the child's own call
    os.close(job_read)
    os.close(done_write)
    return pid, job_write, done_read


def run_here(job: dict[str, Any], code: types.CodeType) -> int:
    """Run a job in this process (``--in-process``): its TMPDIR, working directory and log,
    then everything put back for the next job; its exit code."""
    saved_env = dict(os.environ)
    saved_fds = (os.dup(1), os.dup(2))
    saved_main = sys.modules.get("__main__")
    here, saved_argv, saved_path = os.getcwd(), list(sys.argv), sys.path[0]
    try:
        enter_workspace(job)
        log = os.open(job["log"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(log, 1)
        os.dup2(log, 2)
        os.close(log)
        return execute(code, job["argv"][0], job["argv"], job["cwd"])
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(BaseException):
                stream.flush()
        for fd, saved in zip((1, 2), saved_fds):
            os.dup2(saved, fd)
            os.close(saved)
        os.environ.clear()
        os.environ.update(saved_env)
        tempfile.tempdir = None
        os.chdir(here)
        sys.argv = saved_argv
        sys.path[0] = saved_path
        if saved_main is not None:
            sys.modules["__main__"] = saved_main


def warm_up(code: types.CodeType, script: str, argv: list[str], cwd: str) -> int:
    """Run the script once in this process so lazy imports and caches are loaded before forking."""
    here, saved_argv, saved_path = os.getcwd(), list(sys.argv), sys.path[0]
    try:
        status = execute(code, script, argv, cwd)
    finally:
        os.chdir(here)
        sys.argv = saved_argv
        sys.path[0] = saved_path
    return status


class Runs:
    """Several jobs at once, each in a forked child of its own group, with up to ``ahead``
    children forked ahead so jobs that arrive together wait for no fork."""

    def __init__(self, channel: IO[bytes], code: types.CodeType, ahead: int) -> None:
        self.channel = channel
        self.code = code
        self.ahead = max(1, ahead)
        # the pipe a child reports on -> (job id, pid)
        self.running: dict[int, tuple[Any, int]] = {}
        # (pid, job pipe, report pipe) of children waiting for a job
        self.spares: deque[tuple[int, int, int]] = deque()

    def pipes(self) -> list[int]:
        held = list(self.running)
        for _, job_pipe, done_pipe in self.spares:
            held += [job_pipe, done_pipe]
        return held

    def fork_one(self) -> None:
        self.spares.append(fork_spare(self.channel, self.code, group=True, inherited=self.pipes()))

    def refill(self) -> None:
        """Fork children ahead up to ``ahead``, and say so before any of them gets a job."""
        if len(self.spares) >= self.ahead:
            return
        while len(self.spares) < self.ahead:
            self.fork_one()
        self.announce()

    def announce(self) -> None:
        pids = [pid for _, pid in self.running.values()]
        pids += [pid for pid, _, _ in self.spares]
        write_frame(self.channel, {"pids": pids})

    def start(self, job: dict[str, Any]) -> None:
        if not self.spares:
            self.fork_one()
            self.announce()
        pid, job_pipe, done_pipe = self.spares.popleft()
        self.running[done_pipe] = (job.get("id"), pid)
        # A child that died already says so on its report pipe.
        with contextlib.suppress(OSError):
            os.write(job_pipe, json.dumps(job).encode())
        os.close(job_pipe)

    def finish(self, done_pipe: int) -> None:
        job, pid = self.running.pop(done_pipe)
        report = read_exact(done_pipe, 4)
        os.close(done_pipe)
        if len(report) == 4:
            (status,) = struct.unpack(">i", report)
        else:  # the child died without reporting, e.g. killed by a signal
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
            status = wait_for(pid)
        write_frame(self.channel, {"id": job, "ok": True, "code": status})
        reap_finished()

    def cancel(self, job: Any) -> None:
        replaced = False
        for done_pipe, (running, pid) in list(self.running.items()):
            if running == job:
                with contextlib.suppress(OSError):
                    os.killpg(pid, signal.SIGKILL)
                wait_for(pid)
                del self.running[done_pipe]
                os.close(done_pipe)
                replaced = True
        write_frame(self.channel, {"cancelled": job, "replaced": replaced})
        self.announce()

    def stop(self) -> None:
        pids = [pid for _, pid in self.running.values()]
        for pid, job_pipe, _ in self.spares:
            os.close(job_pipe)
            pids.append(pid)
        for pid in pids:
            with contextlib.suppress(OSError):
                os.killpg(pid, signal.SIGKILL)
            wait_for(pid)

    def serve(self, hello: dict[str, Any]) -> int:
        while len(self.spares) < self.ahead:
            self.fork_one()
        write_frame(self.channel, {**hello, "pids": [pid for pid, _, _ in self.spares]})
        incoming = FrameBuffer()
        while True:
            # Children that reported exit a moment later: collect them, at least every second.
            readable, _, _ = select.select([0, *self.running], [], [], 1.0)
            reap_finished()
            # Taken before a cancel or a new run can reuse a pipe's number.
            done = [(fd, self.running[fd]) for fd in readable if fd in self.running]
            if 0 in readable:
                data = os.read(0, 65536)
                if not data:
                    self.stop()
                    return 0
                for message in incoming.feed(data):
                    if "cancel" in message:
                        self.cancel(message["cancel"])
                    else:
                        self.start(message)
            for done_pipe, run in done:
                if self.running.get(done_pipe) == run:
                    self.finish(done_pipe)
            # The next children are forked while these run, so no job waits for a fork.
            self.refill()


def main() -> int:
    if len(sys.argv) < 2 or sys.argv[1] in ("-h", "--help"):
        print(usage(), file=sys.stderr)
        return 2
    script = sys.argv[1]
    forked = sys.argv[2:3] == ["--forked"]
    in_process = sys.argv[2:3] == ["--in-process"]
    ahead = int(sys.argv[3]) if forked else 1
    # the warm-up run's arguments come after the shape's own
    skip = 4 if forked else 3 if in_process else 2
    warm_up_argv = sys.argv[skip : skip + 3]
    # The protocol owns the real stdout; anything printed before forking goes to stderr.
    channel = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.path.insert(0, str(Path(script).resolve().parent))
    source = Path(script).read_text(encoding="utf-8")
    code = compile(source, script, "exec")
    loaded = preload(script)
    warmed = None
    if len(warm_up_argv) == 3:
        warmed = warm_up(code, script, [script, *warm_up_argv[:2]], warm_up_argv[2])
    sys.stdout.flush()
    sys.stderr.flush()
    gc.collect()
    if hasattr(gc, "freeze"):
        gc.freeze()  # objects made so far stay untouched by the children's collections
    hello = {"ready": True, "pid": os.getpid(), "preloaded": loaded, "warm_up": warmed}
    if forked:
        return Runs(channel, code, ahead).serve(hello)
    requests = sys.stdin.buffer
    if in_process:
        write_frame(channel, hello)
        while True:
            job = read_frame(requests)
            if job is None:
                return 0
            write_frame(channel, {"ok": True, "code": run_here(job, code)})
    spare = fork_spare(channel, code)
    write_frame(channel, hello)
    while True:
        job = read_frame(requests)
        pid, job_pipe, done_pipe = spare
        if job is None:
            os.close(job_pipe)
            wait_for(pid)
            return 0
        os.write(job_pipe, json.dumps(job).encode())
        os.close(job_pipe)
        # The next child is forked while this one runs, so no job waits for a fork.
        spare = fork_spare(channel, code)
        report = read_exact(done_pipe, 4)
        os.close(done_pipe)
        if len(report) == 4:
            (status,) = struct.unpack(">i", report)
        else:  # the child died without reporting, e.g. killed by a signal
            status = wait_for(pid)
        write_frame(channel, {"ok": True, "code": status})
        reap_finished()


def wait_for(pid: int) -> int:
    """Wait for one child; its exit code (or -9 if it was already reaped as finished)."""
    try:
        _, raw = os.waitpid(pid, 0)
    except ChildProcessError:
        return -9
    return exit_code(raw)


def reap_finished() -> None:
    """Collect children that have exited, without waiting for those still tearing down."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


if __name__ == "__main__":
    sys.exit(main())
