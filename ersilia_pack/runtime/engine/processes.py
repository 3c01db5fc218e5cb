"""Model processes seen from the server: start, drain, talk in frames, kill, replace.

Two pools of them. ForkedPool (the default): one model-side parent per API that loads once and
forks its slots, so the slots share the pages the load made; the server talks to the parent
alone, over one pair of pipes, with several calls in flight told apart by an id, and the
parent relays each call to a child of its own (simplest: the children need no channel to the
server, and the server has one reader per API). ProcessPool (``--separate-workers``, or an API
the pack found unsafe to fork): a process per slot, each loading on its own, one call at a
time each.

Every pipe from a model process is drained as it fills, in chunks, never read as one
unbounded line, and only a bounded tail of it is kept; every wait has a bound; a process that
stops answering is killed with everything it started.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import os
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ersilia_pack.model_side import framing

logger = logging.getLogger("ersilia_pack.runtime")

TAIL_LINES = 20
LOGGED_LINE_CHARS = 2000  # a line longer than this is cut in the log
_CHUNK = 65536
_GRACE = 5.0  # seconds a killed process gets to be reaped and close its pipes


class RunError(Exception):
    """A run of the model failed; ``detail`` is safe to show to a caller."""

    def __init__(self, detail: str, stderr_tail: str = "") -> None:
        super().__init__(detail)
        self.detail = detail
        self.stderr_tail = stderr_tail


class RunFailed(RunError):
    """The model ran but failed: non-zero exit, a crash, or output of the wrong shape."""


class RunTimeout(RunError):
    """The model did not answer in time; its process was killed."""


class ProcessDied(RunFailed):
    """A long-lived model process died during a run (killed, out of memory, a crash)."""


class OutputTail:
    """The last lines a process wrote, fed chunk by chunk.

    Lines end at ``\\n``; a ``\\r`` starts the current line again, as a terminal does, so a
    progress bar that redraws itself costs one line, not thousands. Complete lines can be
    passed on to a log as they arrive.
    """

    def __init__(self, name: str = "", *, log_level: int | None = None) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        self.name = name
        self.log_level = log_level
        self.total_bytes = 0
        self._partial = ""

    def feed(self, data: bytes) -> None:
        self.total_bytes += len(data)
        text = self._partial + data.decode("utf-8", errors="replace")
        *complete, self._partial = text.split("\n")
        for line in complete:
            self._add(line)
        self._partial = self._partial.rsplit("\r", 1)[-1][-_CHUNK:]

    def close(self) -> None:
        if self._partial.strip():
            self._add(self._partial)
        self._partial = ""

    def _add(self, line: str) -> None:
        line = line.rsplit("\r", 1)[-1].rstrip()
        if not line:
            return
        self.lines.append(line[:LOGGED_LINE_CHARS])
        if self.log_level is not None:
            logger.log(self.log_level, "[%s] %s", self.name, line[:LOGGED_LINE_CHARS])

    def text(self) -> str:
        parts = list(self.lines)
        if self._partial.strip():
            parts.append(self._partial.rstrip()[:LOGGED_LINE_CHARS])
        return "\n".join(parts)


async def drain(stream: asyncio.StreamReader | None, tail: OutputTail) -> None:
    """Read a pipe to its end in chunks, keeping only its tail."""
    if stream is None:
        return
    with contextlib.suppress(ConnectionError):
        while chunk := await stream.read(_CHUNK):
            tail.feed(chunk)
    tail.close()


def kill_group(pid: int) -> None:
    """SIGKILL a process group; nothing a model process started outlives it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)


# The shell a cold run starts in: it runs the command in the background and waits, so the
# parent-death signal (SIGTERM, set by ``die_with_server``) interrupts the wait and its trap
# kills the run's whole process group, children included; otherwise it exits as the command did.
_GUARD = 'trap "trap - TERM; kill -KILL 0" TERM; "$@" & wait $!'


def guarded(command: list[str]) -> list[str]:
    """``command`` behind a shell that kills the command's whole process group when the
    server dies (with ``die_with_server`` as the process's ``preexec_fn``)."""
    return ["bash", "-c", _GUARD, "ersilia-pack-run", *command]


def _prctl() -> Callable[..., int] | None:
    try:
        import ctypes

        function: Callable[..., int] = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux
        return None
    return function


_PRCTL = _prctl()
_PR_SET_PDEATHSIG = 1


def die_with_server(server: int | None = None) -> Callable[[], None] | None:
    """A ``preexec_fn``: the new process gets SIGTERM when the server dies (Linux's parent-death
    signal, as the warm and load-once processes set on themselves), and ends at once when the
    server died before it was set. None where there is no prctl."""
    if _PRCTL is None:
        return None
    prctl, parent = _PRCTL, server if server is not None else os.getpid()

    def preexec() -> None:
        prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:
            os._exit(1)

    return preexec


async def reap(process: asyncio.subprocess.Process) -> None:
    """Kill a process's group and wait, boundedly, until it is gone."""
    kill_group(process.pid)
    with contextlib.suppress(asyncio.TimeoutError, ProcessLookupError):
        await asyncio.wait_for(process.wait(), _GRACE)


class ModelProcess:
    """One long-lived process on the model environment's interpreter, speaking frames.

    stdout carries frames; stderr is drained into a tail and the log as it arrives.
    """

    def __init__(self, process: asyncio.subprocess.Process, name: str) -> None:
        self.process = process
        self.name = name
        self.stderr = OutputTail(f"{name} {process.pid}", log_level=logging.INFO)
        self._drain = asyncio.create_task(drain(process.stderr, self.stderr))

    @classmethod
    async def spawn(
        cls, name: str, command: list[str], *, env: dict[str, str], cwd: Path
    ) -> ModelProcess:
        process = await asyncio.create_subprocess_exec(
            *command,
            cwd=cwd,
            env=env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
            limit=_CHUNK,
        )
        return cls(process, name)

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    async def _gone(self, error: BaseException) -> ProcessDied:
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.process.wait(), _GRACE)
        # the last lines of stderr explain the exit: let them arrive, boundedly
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(self._drain), 1.0)
        code = self.process.returncode
        how = f"exited with code {code}" if code is not None else f"broke its pipe ({error})"
        return ProcessDied(f"the {self.name} process {how}", self.stderr.text())

    async def receive(self) -> dict[str, Any]:
        """The next frame; RunFailed when the process ends or speaks garbage."""
        stdout = self.process.stdout
        assert stdout is not None
        try:
            size = framing.decode_size(await stdout.readexactly(framing.HEADER.size))
            return framing.decode_body(await stdout.readexactly(size))
        except (asyncio.IncompleteReadError, ConnectionError) as error:
            raise await self._gone(error) from error
        except framing.FrameError as error:
            await self.kill()
            raise RunFailed(
                f"the {self.name} process wrote to its protocol channel: {error}",
                self.stderr.text(),
            ) from error

    async def call(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Send one frame and wait for the answer (the caller bounds the wait)."""
        stdin = self.process.stdin
        assert stdin is not None
        try:
            stdin.write(framing.encode(payload))
            await stdin.drain()
        except (ConnectionError, BrokenPipeError) as error:
            raise await self._gone(error) from error
        return await self.receive()

    async def kill(self) -> None:
        """Kill the process and everything it started, and close every pipe to it."""
        await reap(self.process)
        if self.process.stdin is not None:
            self.process.stdin.close()
        with contextlib.suppress(asyncio.TimeoutError, ConnectionError):
            if self.process.stdout is not None:
                await asyncio.wait_for(self.process.stdout.read(), _GRACE)
            await asyncio.wait_for(asyncio.shield(self._drain), _GRACE)
        self._drain.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._drain
        transport = getattr(self.process, "_transport", None)
        if transport is not None:
            transport.close()


class _LoadRetrying:
    """What both pools do when their model process fails to load: say why, and try again
    after a pause that doubles each time (1 s, 2 s, 4 s ... up to a minute)."""

    RETRY_FIRST = 1.0
    RETRY_MAX = 60.0
    name: str
    load_error: str | None
    _failures: int

    def _spawn(self, delay: float = 0.0) -> None:
        raise NotImplementedError

    def _loaded_again(self) -> None:
        self._failures = 0
        self.load_error = None

    def _load_failed(self, reason: str, stderr_tail: str) -> None:
        self.load_error = f"the {self.name} process failed to start: {reason}"
        self._failures += 1
        delay = min(self.RETRY_MAX, self.RETRY_FIRST * 2 ** (self._failures - 1))
        logger.error("%s (trying again in %g s)\n%s", self.load_error, delay, stderr_tail)
        self._spawn(delay)


class ProcessPool(_LoadRetrying):
    """Processes that load once and then answer one frame at a time each (separate workers).

    Processes start in the background; a call waits for an idle one. A process that dies is
    replaced; one that runs out of time is killed (with everything it started) and replaced.
    A process that fails to load is tried again with a growing pause, so a model whose load
    failed for a passing reason (a file not yet mounted, memory) comes back by itself.
    """

    def __init__(
        self,
        name: str,
        command: list[str],
        *,
        size: int,
        load_timeout: float,
        env: dict[str, str],
        prepare: Callable[[], tuple[Path, dict[str, str], list[str], Callable[[], None]]],
    ) -> None:
        self.name = name
        self.command = command
        self.size = size
        self.load_timeout = load_timeout
        self._env = env
        # Per process: its working directory, extra variables and arguments, and a cleanup.
        self._prepare = prepare
        self._idle: asyncio.Queue[ModelProcess] = asyncio.Queue()
        self._loaded: set[ModelProcess] = set()
        self._spawned: dict[
            ModelProcess, Callable[[], None]
        ] = {}  # every live process -> its cleanup
        self._starting: set[asyncio.Task[None]] = set()
        self._closed = False
        self.load_error: str | None = None
        self._failures = 0
        self.replaced = 0

    @property
    def ready(self) -> bool:
        return any(process.alive for process in self._loaded)

    @property
    def pids(self) -> list[int]:
        """Process ids of the live model processes."""
        return [process.process.pid for process in self._spawned]

    async def start(self) -> None:
        for _ in range(self.size):
            self._spawn()

    def _spawn(self, delay: float = 0.0) -> None:
        if self._closed:
            return
        task = asyncio.create_task(self._start_one(delay))
        self._starting.add(task)
        task.add_done_callback(self._starting.discard)

    async def _start_one(self, delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        try:
            cwd, extra_env, args, cleanup = self._prepare()
        except OSError as error:
            self._load_failed(f"its working folder could not be made: {error}", "")
            return
        try:
            process = await ModelProcess.spawn(
                self.name, [*self.command, *args], env={**self._env, **extra_env}, cwd=cwd
            )
        except OSError as error:
            cleanup()
            self._load_failed(f"it could not start: {error}", "")
            return
        self._spawned[process] = cleanup
        try:
            hello = await asyncio.wait_for(process.receive(), self.load_timeout)
        except asyncio.CancelledError:  # stopped while it was loading: it must not outlive us
            await self._discard(process)
            raise
        except RunFailed as error:
            await self._discard(process)
            self._load_failed(error.detail, error.stderr_tail)
            return
        except asyncio.TimeoutError:
            await self._discard(process)
            self._load_failed(f"it did not load within {self.load_timeout:g} s", "")
            return
        if not hello.get("ready"):
            await self._discard(process)
            self._load_failed("its model failed to load", str(hello.get("error", "")))
            return
        self._loaded_again()
        self._loaded.add(process)
        await self._idle.put(process)

    async def _discard(self, process: ModelProcess) -> None:
        self._loaded.discard(process)
        await process.kill()
        # Forgotten only once dead: a stop() that interrupts the kill kills it again.
        cleanup = self._spawned.pop(process, None)
        if cleanup is not None:
            cleanup()

    async def stop(self) -> None:
        self._closed = True
        for task in list(self._starting):
            task.cancel()
        await asyncio.gather(*self._starting, return_exceptions=True)
        for process in list(self._spawned):
            await self._discard(process)

    async def _take(self, timeout: float) -> ModelProcess:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self.load_error and not self._loaded:
                raise RunFailed(self.load_error)
            wait = min(deadline - loop.time(), 1.0)
            if wait <= 0:
                raise RunTimeout(f"no {self.name} process was free within {timeout:g} s")
            try:
                process = await asyncio.wait_for(self._idle.get(), wait)
            except asyncio.TimeoutError:
                continue  # look at load errors again, then wait on
            if process.alive:
                return process
            await self._retire(process)  # died while idle

    async def _retire(self, process: ModelProcess) -> None:
        await self._discard(process)
        self.replaced += 1
        self._spawn()

    async def call(self, payload: dict[str, Any], *, timeout: float) -> dict[str, Any]:
        """Send one frame to an idle process and return its answer within ``timeout``.

        A process that dies during the call is replaced and the call fails (RunFailed);
        the engine decides what to do with the batch.
        """
        process = await self._take(timeout)
        try:
            reply = await asyncio.wait_for(process.call(payload), timeout)
        except asyncio.TimeoutError as error:
            await self._retire(process)
            raise RunTimeout(f"{self.name} did not finish within {timeout:g} s") from error
        except RunFailed:
            await self._retire(process)
            raise
        except asyncio.CancelledError:
            await self._retire(process)
            raise
        await self._idle.put(process)
        return reply


class ForkedPool(_LoadRetrying):
    """One model-side parent per API that loads once and forks its slots; calls multiplexed.

    The parent (the load-once worker or the warm runner in their forked shape) answers up to
    ``size`` calls at once, each in a forked child, so every slot shares the pages the load
    made. Frames to and from it carry an id; a reader task routes each answer to its call.
    The parent relays between the server and its children, so the server holds one set of
    pipes per API and the children need no channel of their own.

    A call that runs out of time sends ``{"cancel": id}``: the parent kills that child's
    process group (and, for a load-once parent, forks a replacement from the loaded model)
    and says ``{"cancelled": id}`` (a child that dies says ``{"died": true}``; both count in
    ``replaced``); a parent that does not say so within a few seconds has
    stopped answering and is treated as dead. When the parent dies, its group and the groups
    of the children it announced (``{"pids": [...]}``) are killed, every call in flight fails
    with ProcessDied (the engine retries a batch once), and a new parent is started; a load
    that fails is tried again with a growing pause, as ProcessPool does.
    """

    CANCEL_GRACE = _GRACE

    def __init__(
        self,
        name: str,
        command: list[str],
        *,
        size: int,
        load_timeout: float,
        env: dict[str, str],
        prepare: Callable[[], tuple[Path, dict[str, str], list[str], Callable[[], None]]],
    ) -> None:
        self.name = name
        self.command = command
        self.size = size
        self.load_timeout = load_timeout
        self._env = env
        self._prepare = prepare
        self._parent: ModelProcess | None = None
        self._cleanup: Callable[[], None] | None = None
        self._reader: asyncio.Task[None] | None = None
        self._children: set[int] = set()
        # threads other than the main one that the parent's load() left running
        self.threads_after_load: list[str] = []
        self._calls: dict[int, asyncio.Future[dict[str, Any]]] = {}
        self._acks: dict[int, asyncio.Future[None]] = {}
        self._ids = itertools.count(1)
        self._slots = asyncio.Semaphore(size)
        self._write_lock = asyncio.Lock()
        self._loaded = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False
        self.load_error: str | None = None
        self._failures = 0
        self.replaced = 0

    @property
    def ready(self) -> bool:
        return self._parent is not None and self._parent.alive

    async def start(self) -> None:
        self._spawn()

    def _background(self, coroutine: Any) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _spawn(self, delay: float = 0.0) -> None:
        if not self._closed:
            self._background(self._start_parent(delay))

    async def _start_parent(self, delay: float) -> None:
        if delay:
            await asyncio.sleep(delay)
        try:
            cwd, extra_env, args, cleanup = self._prepare()
        except OSError as error:
            self._load_failed(f"its working folder could not be made: {error}", "")
            return
        try:
            process = await ModelProcess.spawn(
                self.name, [*self.command, *args], env={**self._env, **extra_env}, cwd=cwd
            )
        except OSError as error:
            cleanup()
            self._load_failed(f"it could not start: {error}", "")
            return
        try:
            hello = await asyncio.wait_for(process.receive(), self.load_timeout)
        except asyncio.CancelledError:  # stopped while it was loading: it must not outlive us
            await self._kill(process, cleanup)
            raise
        except RunFailed as error:
            await self._kill(process, cleanup)
            self._load_failed(error.detail, error.stderr_tail)
            return
        except asyncio.TimeoutError:
            await self._kill(process, cleanup)
            self._load_failed(f"it did not load within {self.load_timeout:g} s", "")
            return
        self._children = {int(pid) for pid in hello.get("pids", [])}
        self.threads_after_load = [str(name) for name in hello.get("threads", [])]
        if self.threads_after_load:
            logger.warning(
                "%s: load() left %d threads running (%s): a slot forked from it may hang on a "
                "lock one of them held; a pack of the model serves it with a process per slot, "
                "as --separate-workers does",
                self.name,
                len(self.threads_after_load),
                ", ".join(self.threads_after_load[:5]),
            )
        if not hello.get("ready"):
            await self._kill(process, cleanup)
            self._load_failed("its model failed to load", str(hello.get("error", "")))
            return
        if self._closed:
            await self._kill(process, cleanup)
            return
        self._loaded_again()
        self._parent, self._cleanup = process, cleanup
        self._reader = asyncio.create_task(self._read(process))
        self._loaded.set()

    async def _read(self, process: ModelProcess) -> None:
        """Route the parent's frames to their calls until it ends."""
        while True:
            try:
                frame = await process.receive()
            except RunFailed as error:
                await self._lost(process, error)
                return
            if "pids" in frame:
                self._children = {int(pid) for pid in frame["pids"]}
            if frame.get("died") or frame.get("replaced"):
                self.replaced += 1  # a child died or was killed, and the parent forked anew
            if "cancelled" in frame:
                ack = self._acks.pop(frame["cancelled"], None)
                if ack is not None and not ack.done():
                    ack.set_result(None)
            elif "id" in frame:
                call = self._calls.pop(frame["id"], None)
                if call is not None and not call.done():
                    # a child's reply comes wrapped, passed on by the parent undecoded
                    reply = frame.get("reply")
                    call.set_result(reply if isinstance(reply, dict) else frame)

    async def _kill(self, process: ModelProcess, cleanup: Callable[[], None] | None) -> None:
        """Kill the parent's group and every child group it announced, then clean up."""
        kill_group(process.process.pid)  # first, so it forks no more children
        for pid in self._children:
            kill_group(pid)
        self._children = set()
        await process.kill()
        if cleanup is not None:
            cleanup()

    async def _lost(self, process: ModelProcess, error: RunError) -> None:
        """The parent died or stopped answering: fail what it held, start another."""
        if self._parent is not process:
            return
        self._parent, cleanup = None, self._cleanup
        self._cleanup = None
        self._loaded.clear()
        reader = self._reader
        if reader is not None and reader is not asyncio.current_task():
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
        calls, self._calls = self._calls, {}
        acks, self._acks = self._acks, {}
        for call in calls.values():
            if not call.done():
                call.set_exception(ProcessDied(error.detail, error.stderr_tail))
        for ack in acks.values():
            if not ack.done():
                ack.set_result(None)
        await self._kill(process, cleanup)
        if not self._closed:
            logger.error("%s; starting it again", error.detail)
            self.replaced += 1
            self._spawn()

    async def _send(self, process: ModelProcess, payload: dict[str, Any]) -> None:
        stdin = process.process.stdin
        assert stdin is not None
        async with self._write_lock:
            stdin.write(framing.encode(payload))
            await stdin.drain()

    def _cancel(self, process: ModelProcess, call_id: int) -> None:
        """Ask the parent to kill the child running ``call_id``; a parent that does not
        confirm in time has stopped answering."""
        ack: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._acks[call_id] = ack

        async def confirm() -> None:
            try:
                await asyncio.wait_for(self._send(process, {"cancel": call_id}), _GRACE)
                await asyncio.wait_for(asyncio.shield(ack), self.CANCEL_GRACE)
            except (asyncio.TimeoutError, ConnectionError, BrokenPipeError):
                self._acks.pop(call_id, None)
                detail = f"the {self.name} process stopped answering"
                await self._lost(process, ProcessDied(detail, process.stderr.text()))

        self._background(confirm())

    async def _answering(self, deadline: float, timeout: float) -> ModelProcess:
        loop = asyncio.get_running_loop()
        while True:
            process = self._parent
            if process is not None and process.alive:
                return process
            if self.load_error:
                raise RunFailed(self.load_error)
            wait = min(deadline - loop.time(), 1.0)
            if wait <= 0:
                raise RunTimeout(f"no {self.name} process was free within {timeout:g} s")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._loaded.wait(), wait)

    async def call(self, payload: dict[str, Any], *, timeout: float) -> dict[str, Any]:
        """Send one frame to a free slot and return its answer within ``timeout``.

        A child or a parent that dies during the call fails it with ProcessDied; the engine
        decides what to do with the batch.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        process = await self._answering(deadline, timeout)
        try:
            await asyncio.wait_for(self._slots.acquire(), max(deadline - loop.time(), 0.001))
        except asyncio.TimeoutError as error:
            raise RunTimeout(f"no {self.name} slot was free within {timeout:g} s") from error
        try:
            process = await self._answering(deadline, timeout)
            call_id = next(self._ids)
            answer: asyncio.Future[dict[str, Any]] = loop.create_future()
            self._calls[call_id] = answer
            try:
                remaining = max(deadline - loop.time(), 0.001)
                await asyncio.wait_for(self._send(process, {**payload, "id": call_id}), remaining)
                remaining = max(deadline - loop.time(), 0.001)
                reply = await asyncio.wait_for(asyncio.shield(answer), remaining)
            except asyncio.TimeoutError as error:
                self._calls.pop(call_id, None)
                self._cancel(process, call_id)
                raise RunTimeout(f"{self.name} did not finish within {timeout:g} s") from error
            except (ConnectionError, BrokenPipeError) as error:
                self._calls.pop(call_id, None)
                raise ProcessDied(f"the {self.name} process broke its pipe ({error})") from error
            except asyncio.CancelledError:
                if self._calls.pop(call_id, None) is not None:
                    self._cancel(process, call_id)
                raise
        finally:
            self._slots.release()
        if reply.get("died"):
            code = reply.get("code")
            raise ProcessDied(
                f"a {self.name} process exited with code {code} during the run",
                process.stderr.text(),
            )
        return reply

    async def stop(self) -> None:
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        process = self._parent
        if process is not None:
            await self._lost(process, ProcessDied(f"the {self.name} process was stopped"))
