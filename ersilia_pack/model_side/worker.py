"""Load-once worker: import an API module, call load() once, answer batches.

Copied into each bundle as ``app/worker.py``; the model it serves and the version of
ersilia_pack that copied it are in the bundle's ``manifest.json``, beside ``app/``, which its
usage line reads. It runs on the model environment's interpreter, which
does not have ersilia_pack installed, so it uses the standard library and the frames of
ersilia_framing.py beside it. It only reports: rows of a batch, or that the batch failed; what
to do about a failure is the server's decision.

Two shapes, chosen by the server:

- ``worker.py SCRIPT CLASS SLOTS_JSON`` (forked, the default): this process loads the model
  once, then forks one child per slot, so every slot shares the pages the load made. Frames
  from the server carry an ``id``; this parent hands each batch to an idle child over the
  child's own pipes and relays its answer, with the same ``id``, to the server. A
  ``{"cancel": id}`` frame kills that child's process group (it runs in one of its own) and a
  fresh child is forked from this loaded parent at once: no reload. A child that dies is
  reported (``{"died": true}``, with the ``id`` of the batch it held) and replaced the same
  way. Whenever the children
  change, a ``{"pids": [...]}`` frame tells the server, so it can kill their groups if this
  parent dies. Each slot has its own working directory and TMPDIR, which the server made.
- ``worker.py SCRIPT CLASS`` (separate workers): this process is one slot of its own and
  answers one batch at a time, frames without ids.
"""

# Annotations stay unevaluated: the model environment's interpreter may be as old as 3.7.
from __future__ import annotations

import contextlib
import ctypes
import gc
import importlib.util
import inspect
import json
import os
import select
import shutil
import signal
import sys
import tempfile
import threading
import traceback
import types
from collections import deque
from collections.abc import Iterable
from pathlib import Path
from typing import IO, Any

if __package__:  # imported as ersilia_pack.model_side.worker: the linter, type checker, tests
    from .framing import (
        FrameBuffer,
        FrameError,
        bundle_usage,
        decode_body,
        frame,
        read_frame,
        wrap_reply,
        write_frame,
    )
else:  # the bundle's copy, run as a script beside ersilia_framing.py
    from ersilia_framing import (  # type: ignore[no-redef]
        FrameBuffer,
        FrameError,
        bundle_usage,
        decode_body,
        frame,
        read_frame,
        wrap_reply,
        write_frame,
    )

# The bundle's manifest, beside its app/ folder (this file is app/worker.py).
MANIFEST = Path(__file__).resolve().parent.parent / "manifest.json"
USAGE = "usage: worker.py SCRIPT CLASS [SLOTS_JSON]"

CHUNK = 65536


def usage(manifest: Path = MANIFEST) -> str:
    """The usage text, naming the model this bundle serves."""
    return bundle_usage("Load-once worker", USAGE, manifest)


def find_class(module: types.ModuleType, name: str) -> type:
    if name:
        return getattr(module, name)
    for candidate in vars(module).values():
        if (
            inspect.isclass(candidate)
            and candidate.__module__ == module.__name__
            and callable(getattr(candidate, "load", None))
            and callable(getattr(candidate, "predict", None))
        ):
            return candidate
    raise LookupError(f"{module.__file__} defines no class with load() and predict()")


def load_model(script: str, class_name: str) -> Any:
    path = Path(script).resolve()
    sys.path.insert(0, str(path.parent))
    spec = importlib.util.spec_from_file_location(path.stem, path)
    if spec is None or spec.loader is None:
        raise ImportError(f"{path} cannot be imported as a module")
    module = importlib.util.module_from_spec(spec)
    sys.modules[path.stem] = module
    spec.loader.exec_module(module)
    model = find_class(module, class_name)()
    model.load()
    return model


def running_threads() -> list[str]:
    """Names of the threads other than the main one that are running now: after load(), a
    thread that may hold a lock when the slots are forked, which hangs a slot that needs it."""
    main = threading.main_thread()
    return [thread.name for thread in threading.enumerate() if thread is not main]


def as_row(row: Any) -> Any:
    """A row as JSON can carry it: lists and dicts as they are, arrays as lists."""
    if row is None or isinstance(row, (list, dict)):
        return row
    if isinstance(row, tuple):
        return list(row)
    if hasattr(row, "tolist"):
        return row.tolist()
    return row


def predict_batch(model: Any, message: dict[str, Any]) -> dict[str, Any]:
    """The reply to one batch: its rows, or the end of the traceback of a predict() that
    failed (what to do about it is the server's decision)."""
    try:
        rows = [as_row(row) for row in model.predict(list(message["inputs"]))]
    except Exception:
        return {"ok": False, "error": traceback.format_exc(limit=-3)}
    return {"ok": True, "rows": rows}


def hold_threads() -> None:
    """A forked child of a process that ran a torch operation hangs on its next multi-threaded
    one unless torch keeps to one thread."""
    torch = sys.modules.get("torch")
    if torch is not None:
        with contextlib.suppress(BaseException):
            torch.set_num_threads(1)


def die_with_parent(parent: int) -> None:
    """Be killed when the parent dies (Linux), so no slot outlives a parent killed with SIGKILL."""
    with contextlib.suppress(BaseException):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # it died before the line above
        os._exit(1)


def empty_folder(path: str) -> None:
    """Remove what a killed child left in its TMPDIR before the next one uses it."""
    with contextlib.suppress(OSError):
        for entry in os.scandir(path):
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(entry.path, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    os.unlink(entry.path)


def serve_slot(model: Any, slot: dict[str, Any], requests: int, replies: int) -> None:
    """In a forked child: answer batches from `requests` on `replies` until the parent goes."""
    os.chdir(slot["cwd"])
    os.environ.update(slot.get("env") or {})
    tempfile.tempdir = None
    hold_threads()
    incoming = os.fdopen(requests, "rb")
    outgoing = os.fdopen(replies, "wb")
    while True:
        message = read_frame(incoming)
        if message is None:
            return
        write_frame(outgoing, predict_batch(model, message))


class Slot:
    """One forked child and the parent's ends of its pipes."""

    def __init__(self, index: int, spec: dict[str, Any]) -> None:
        self.index = index
        self.spec = spec
        self.pid = 0
        self.requests = -1
        self.replies = -1
        self.buffer = FrameBuffer()
        self.job: Any = None


class Parent:
    """The loaded model, its slots, and the relay between the server and them."""

    def __init__(
        self,
        model: Any,
        specs: list[dict[str, Any]],
        channel: IO[bytes],
        threads: Iterable[str] = (),
    ) -> None:
        self.model = model
        self.threads = list(threads)
        self.channel = channel
        self.slots = [Slot(index, spec) for index, spec in enumerate(specs)]
        # (the frame, its undecoded body) of batches no child holds yet
        self.pending: deque[tuple[dict[str, Any], bytes]] = deque()

    def fork(self, slot: Slot) -> None:
        request_read, request_write = os.pipe()
        reply_read, reply_write = os.pipe()
        parent = os.getpid()
        pid = os.fork()
        if pid == 0:
            status = 1
            try:
                os.setpgid(0, 0)
                die_with_parent(parent)
                signal.signal(signal.SIGTERM, signal.SIG_DFL)
                keep = {0, 1, 2, request_read, reply_write}
                for fd in [self.channel.fileno(), request_write, reply_read] + [
                    end for other in self.slots for end in (other.requests, other.replies)
                ]:
                    if fd not in keep and fd >= 0:
                        with contextlib.suppress(OSError):
                            os.close(fd)
                devnull = os.open(os.devnull, os.O_RDONLY)
                os.dup2(devnull, 0)
                serve_slot(self.model, slot.spec, request_read, reply_write)
                status = 0
            except BaseException:
                traceback.print_exc()
            finally:
                with contextlib.suppress(BaseException):
                    sys.stderr.flush()
                os._exit(status)
        with contextlib.suppress(OSError):
            os.setpgid(pid, pid)  # also here, so no kill can come before the child's own call
        os.close(request_read)
        os.close(reply_write)
        slot.pid, slot.requests, slot.replies = pid, request_write, reply_read
        slot.buffer = FrameBuffer()
        slot.job = None

    def send(self, payload: dict[str, Any]) -> None:
        write_frame(self.channel, payload)

    def announce(self) -> None:
        self.send({"pids": [slot.pid for slot in self.slots]})

    def retire(self, slot: Slot) -> int:
        """Kill a child's group, reap it, and fork a fresh one from the loaded model; its
        exit code."""
        with contextlib.suppress(OSError):
            os.killpg(slot.pid, signal.SIGKILL)
        for fd in (slot.requests, slot.replies):
            with contextlib.suppress(OSError):
                os.close(fd)
        slot.requests = slot.replies = -1
        status = wait_for(slot.pid)
        tmp = (slot.spec.get("env") or {}).get("TMPDIR")
        if tmp:
            empty_folder(tmp)
        self.fork(slot)
        self.announce()
        return status

    def died(self, slot: Slot) -> None:
        """A child ended by itself; the batch it held (if any) fails, the server counts it."""
        job = slot.job
        status = self.retire(slot)
        reply = {"died": True, "code": status}
        self.send(reply if job is None else {**reply, "id": job})

    def cancel(self, job: Any) -> None:
        self.pending = deque(item for item in self.pending if item[0].get("id") != job)
        replaced = False
        for slot in self.slots:
            if slot.job == job:
                self.retire(slot)
                replaced = True
        self.send({"cancelled": job, "replaced": replaced})

    def dispatch(self) -> None:
        for slot in self.slots:
            if not self.pending:
                return
            if slot.job is not None:
                continue
            message, body = self.pending.popleft()
            slot.job = message.get("id")
            try:
                # passed on as it came: the child reads its inputs and ignores the id
                write_fd(slot.requests, frame(body))
            except OSError:
                self.died(slot)

    def answer(self, slot: Slot) -> None:
        try:
            data = os.read(slot.replies, CHUNK)
        except OSError:
            data = b""
        if not data:
            self.died(slot)
            return
        try:
            replies = slot.buffer.feed_raw(data)
        except FrameError:
            self.died(slot)
            return
        for reply in replies:
            # passed on undecoded, under the id of the call it answers
            job, slot.job = slot.job, None
            self.channel.write(wrap_reply(job, reply))
            self.channel.flush()

    def stop(self) -> None:
        for slot in self.slots:
            with contextlib.suppress(OSError):
                os.killpg(slot.pid, signal.SIGKILL)
        for slot in self.slots:
            wait_for(slot.pid)

    def run(self) -> int:
        for slot in self.slots:
            self.fork(slot)
        pids = [slot.pid for slot in self.slots]
        self.send({"ready": True, "pid": os.getpid(), "pids": pids, "threads": self.threads})
        incoming = FrameBuffer()
        while True:
            watched = [0] + [slot.replies for slot in self.slots]
            readable, _, _ = select.select(watched, [], [])
            # Taken before a cancel can replace a child: its new pipe may reuse a number.
            answering = [(slot, slot.pid) for slot in self.slots if slot.replies in readable]
            if 0 in readable:
                data = os.read(0, CHUNK)
                if not data:
                    self.stop()
                    return 0
                for body in incoming.feed_raw(data):
                    message = decode_body(body)
                    if "cancel" in message:
                        self.cancel(message["cancel"])
                    else:
                        self.pending.append((message, body))
            for slot, pid in answering:
                if slot.pid == pid:
                    self.answer(slot)
            self.dispatch()


def write_fd(fd: int, data: bytes) -> None:
    """Bytes written whole to a pipe's file descriptor."""
    left = memoryview(data)
    while left:
        left = left[os.write(fd, left) :]


def wait_for(pid: int) -> int:
    """Wait for one child; its exit code (negative for a signal)."""
    try:
        _, raw = os.waitpid(pid, 0)
    except ChildProcessError:
        return -9
    if os.WIFSIGNALED(raw):
        return -os.WTERMSIG(raw)
    return os.WEXITSTATUS(raw)


def forked_main(script: str, class_name: str, specs: list[dict[str, Any]]) -> int:
    # The protocol owns the real stdout; whatever the model prints goes to stderr.
    channel = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    here = os.getcwd()
    try:
        model = load_model(script, class_name)
    except BaseException:
        write_frame(channel, {"ready": False, "error": traceback.format_exc(limit=-3)})
        return 1
    os.chdir(here)
    sys.stderr.flush()
    threads = running_threads()  # told to the server, which decides whether forking is safe
    gc.collect()
    if hasattr(gc, "freeze"):
        gc.freeze()  # what load() made stays untouched by the children's collections
    return Parent(model, specs, channel, threads).run()


def main() -> int:
    if len(sys.argv) < 3 or sys.argv[1] in ("-h", "--help"):
        print(usage(), file=sys.stderr)
        return 2
    script, class_name = sys.argv[1], sys.argv[2]
    if len(sys.argv) > 3:
        return forked_main(script, class_name, json.loads(sys.argv[3]))
    # The protocol owns the real stdout; whatever the model prints goes to stderr.
    channel = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    requests = sys.stdin.buffer
    try:
        model = load_model(script, class_name)
    except BaseException:
        write_frame(channel, {"ready": False, "error": traceback.format_exc(limit=-3)})
        return 1
    write_frame(channel, {"ready": True, "pid": os.getpid(), "threads": running_threads()})
    while True:
        message = read_frame(requests)
        if message is None:
            return 0
        write_frame(channel, predict_batch(model, message))


if __name__ == "__main__":
    sys.exit(main())
