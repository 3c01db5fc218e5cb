"""Ways to run one batch of inputs through a model: a script per run, or load-once workers."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import csv
import json
import logging
import os
import shutil
import signal
import struct
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from ersilia_pack.runtime.bundle.manifest import ApiDefinition, Bundle

logger = logging.getLogger("ersilia_pack.runtime")

STDERR_TAIL_LINES = 20
_THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)


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


@dataclass
class BatchResult:
    """Raw rows in the API's column order (``None`` where the model gave nothing)."""

    rows: list[list[Any] | None]
    errors: dict[int, str]


class Runner(Protocol):
    """What the engine needs from a way of running a model."""

    concurrency: int

    @property
    def ready(self) -> bool: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def run(self, inputs: list[str]) -> BatchResult: ...


def model_env(bundle: Bundle) -> dict[str, str]:
    """Process environment for model code: its environment first, numeric pools at one thread."""
    env = bundle.manifest.environment.process_env()
    for name in _THREAD_VARIABLES:
        env.setdefault(name, "1")
    return env


def tail(text: str, lines: int = STDERR_TAIL_LINES) -> str:
    """The last lines of a process's output."""
    return "\n".join(text.rstrip().splitlines()[-lines:])


def align(header: list[str], rows: list[list[str]], api: ApiDefinition) -> list[list[Any] | None]:
    """Put a script's output columns in the API's declared order.

    Columns are matched by name when the header names them all, else by position. A row
    whose every value is empty means the model could not handle that input.
    """
    names = api.column_names
    if not names or header == names:
        order = list(range(len(header)))
    elif set(names) <= set(header):
        order = [header.index(name) for name in names]
    elif len(header) == len(names):
        order = list(range(len(names)))
    else:
        raise RunFailed(f"the model wrote columns {header[:8]} but {api.name} declares {names[:8]}")
    aligned: list[list[Any] | None] = []
    for row in rows:
        values = [row[i] if i < len(row) else "" for i in order]
        aligned.append(None if all(value.strip() == "" for value in values) else values)
    return aligned


def _kill_group(process: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)


class ScriptRunner:
    """Runs ``bash <api>.sh <framework> <input.csv> <output.csv>`` once per batch (cold)."""

    def __init__(self, bundle: Bundle, api: ApiDefinition, *, concurrency: int, timeout: float):
        self.bundle = bundle
        self.api = api
        self.concurrency = concurrency
        self.timeout = timeout
        self._env = model_env(bundle)
        self._tmp_root = bundle.state_dir / "tmp"

    @property
    def ready(self) -> bool:
        return True

    async def start(self) -> None:
        self._tmp_root.mkdir(parents=True, exist_ok=True)

    async def stop(self) -> None:
        return None

    def command(self, input_csv: Path, output_csv: Path) -> list[str]:
        framework = self.bundle.framework_dir
        return [
            "bash",
            str(framework / self.api.script),
            str(framework),
            str(input_csv),
            str(output_csv),
        ]

    async def run(self, inputs: list[str]) -> BatchResult:
        workdir = Path(tempfile.mkdtemp(prefix=f"{self.api.name}-", dir=self._tmp_root))
        try:
            input_csv, output_csv = workdir / "input.csv", workdir / "output.csv"
            write_input_csv(input_csv, inputs)
            await self._execute(self.command(input_csv, output_csv))
            header, rows = read_output_csv(output_csv, len(inputs))
            return BatchResult(rows=align(header, rows, self.api), errors={})
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    async def _execute(self, command: list[str]) -> None:
        process = await asyncio.create_subprocess_exec(
            *command,
            cwd=self.bundle.framework_dir,
            env=self._env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            output, _ = await asyncio.wait_for(process.communicate(), self.timeout)
        except asyncio.TimeoutError as error:
            _kill_group(process)
            await process.wait()
            raise RunTimeout(f"{self.api.name} did not finish within {self.timeout:g} s") from error
        except asyncio.CancelledError:
            _kill_group(process)
            await process.wait()  # reap it, so no transport is left open
            raise
        finally:
            _kill_group(process)  # nothing the script started outlives its run
        text = output.decode("utf-8", errors="replace")
        if text.strip():
            logger.debug("%s output:\n%s", self.api.name, tail(text, 50))
        if process.returncode != 0:
            raise RunFailed(f"{self.api.name} exited with code {process.returncode}", tail(text))


def write_input_csv(path: Path, inputs: list[str]) -> None:
    """The input file a script reads: a header row, then one input per row."""
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["input"])
        writer.writerows([value] for value in inputs)


def read_output_csv(path: Path, expected: int) -> tuple[list[str], list[list[str]]]:
    """The header and rows a script wrote; RunFailed unless there is one row per input."""
    try:
        with path.open(newline="", encoding="utf-8", errors="replace") as handle:
            rows = list(csv.reader(handle))
    except FileNotFoundError as error:
        raise RunFailed("the model wrote no output file") from error
    if not rows:
        raise RunFailed("the model wrote an empty output file (no header row)")
    header, body = rows[0], rows[1:]
    if body and not body[-1]:
        body = body[:-1]
    if len(body) != expected:
        raise RunFailed(f"the model wrote {len(body)} rows for {expected} inputs")
    return [name.strip() for name in header], body


def _pack(payload: dict[str, Any]) -> bytes:
    data = json.dumps(payload).encode()
    return struct.pack(">I", len(data)) + data


class _Helper:
    """One long-lived process on the model environment's interpreter, speaking JSON frames."""

    def __init__(self, process: asyncio.subprocess.Process, name: str) -> None:
        self.process = process
        self.name = name
        self.stderr: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        self._drain = asyncio.create_task(self._drain_stderr())

    async def _drain_stderr(self) -> None:
        assert self.process.stderr is not None
        async for raw in self.process.stderr:
            line = raw.decode("utf-8", errors="replace").rstrip()
            self.stderr.append(line)
            logger.info("[%s %d] %s", self.name, self.process.pid, line)

    async def receive(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        try:
            header = await self.process.stdout.readexactly(4)
            (size,) = struct.unpack(">I", header)
            return dict(json.loads(await self.process.stdout.readexactly(size)))
        except (asyncio.IncompleteReadError, ConnectionError) as error:
            await self.process.wait()
            await asyncio.sleep(0)  # let the last stderr lines arrive
            raise RunFailed(
                f"the {self.name} process exited with code {self.process.returncode}",
                "\n".join(self.stderr),
            ) from error

    async def call(self, payload: dict[str, Any]) -> dict[str, Any]:
        assert self.process.stdin is not None
        try:
            self.process.stdin.write(_pack(payload))
            await self.process.stdin.drain()
        except (ConnectionError, BrokenPipeError) as error:
            raise RunFailed(f"the {self.name} process is gone", "\n".join(self.stderr)) from error
        return await self.receive()

    async def kill(self) -> None:
        """Kill the process and everything it started, and close every pipe to it."""
        _kill_group(self.process)
        with contextlib.suppress(ProcessLookupError):
            await self.process.wait()
        if self.process.stdin is not None:
            self.process.stdin.close()
        # With the whole group dead the pipes reach their end: reading to it closes them.
        with contextlib.suppress(asyncio.TimeoutError, ConnectionError):
            if self.process.stdout is not None:
                await asyncio.wait_for(self.process.stdout.read(), 5)
            await asyncio.wait_for(asyncio.shield(self._drain), 5)
        self._drain.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._drain


class ProcessPool:
    """A pool of helper processes that load once and then answer one frame at a time each.

    Processes start in the background; a call waits for an idle one. A process that dies is
    replaced and the call is retried once on another; one that runs out of time is killed
    (with everything it started) and replaced.
    """

    def __init__(
        self,
        name: str,
        command: list[str],
        *,
        size: int,
        timeout: float,
        env: dict[str, str],
        cwd: Path,
    ) -> None:
        self.name = name
        self.command = command
        self.size = size
        self.timeout = timeout
        self._env = env
        self._cwd = cwd
        self._idle: asyncio.Queue[_Helper] = asyncio.Queue()
        self._helpers: set[_Helper] = set()  # loaded and in service
        self._spawned: set[_Helper] = set()  # every live process, loaded or not
        self._starting: set[asyncio.Task[None]] = set()
        self._closed = False
        self.load_error: str | None = None
        self.replaced = 0

    @property
    def ready(self) -> bool:
        return any(helper.process.returncode is None for helper in self._helpers)

    async def start(self) -> None:
        for _ in range(self.size):
            self._spawn()

    def _spawn(self) -> None:
        if self._closed:
            return
        task = asyncio.create_task(self._start_one())
        self._starting.add(task)
        task.add_done_callback(self._starting.discard)

    async def _start_one(self) -> None:
        process = await asyncio.create_subprocess_exec(
            *self.command,
            cwd=self._cwd,
            env=self._env,
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        helper = _Helper(process, self.name)
        self._spawned.add(helper)
        try:
            hello = await asyncio.wait_for(helper.receive(), self.timeout)
        except asyncio.CancelledError:  # stopped while it was loading: it must not outlive us
            await self._discard(helper)
            raise
        except (RunFailed, asyncio.TimeoutError) as error:
            await self._discard(helper)
            reason = str(error) or "it did not answer in time"
            self.load_error = f"the {self.name} process failed to start: {reason}"
            logger.error("%s\n%s", self.load_error, "\n".join(helper.stderr))
            return
        if not hello.get("ready"):
            await self._discard(helper)
            self.load_error = f"the {self.name} model failed to load"
            logger.error("%s:\n%s", self.load_error, hello.get("error", ""))
            return
        self.load_error = None
        self._helpers.add(helper)
        await self._idle.put(helper)

    async def _discard(self, helper: _Helper) -> None:
        self._helpers.discard(helper)
        await helper.kill()
        # Forgotten only once dead: a stop() that interrupts the kill kills it again.
        self._spawned.discard(helper)

    async def stop(self) -> None:
        self._closed = True
        for task in list(self._starting):
            task.cancel()
        await asyncio.gather(*self._starting, return_exceptions=True)
        for helper in list(self._spawned):
            await self._discard(helper)

    async def _take(self) -> _Helper:
        while True:
            if self.load_error and not self._helpers and not self._starting:
                raise RunFailed(self.load_error)
            try:
                helper = await asyncio.wait_for(self._idle.get(), self.timeout)
            except asyncio.TimeoutError as error:
                raise RunTimeout(
                    f"no {self.name} process was free within {self.timeout:g} s"
                ) from error
            if helper.process.returncode is None:
                return helper
            await self._retire(helper)  # died while idle

    async def _retire(self, helper: _Helper) -> None:
        await self._discard(helper)
        self.replaced += 1
        self._spawn()

    async def call(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Send one frame to an idle process and return its answer."""
        for attempt in (1, 2):
            helper = await self._take()
            try:
                reply = await asyncio.wait_for(helper.call(payload), self.timeout)
            except asyncio.TimeoutError as error:
                await self._retire(helper)
                raise RunTimeout(f"{self.name} did not finish within {self.timeout:g} s") from error
            except RunFailed:
                await self._retire(helper)
                if attempt == 2:
                    raise
                logger.warning("a %s process died; retrying its batch once", self.name)
                continue
            except asyncio.CancelledError:
                await self._retire(helper)
                raise
            await self._idle.put(helper)
            return reply
        raise AssertionError("unreachable")


class LoadOnceRunner:
    """A ``<api>.py`` API: workers call ``load()`` once, then answer batches over a pipe."""

    def __init__(self, bundle: Bundle, api: ApiDefinition, *, size: int, timeout: float):
        self.api = api
        self.concurrency = size
        command = [
            bundle.manifest.environment.python,
            str(bundle.path / "app" / "worker.py"),
            str(bundle.framework_dir / api.script),
            api.class_name or "",
            json.dumps(api.column_names),
        ]
        self.pool = ProcessPool(
            f"{api.name} worker",
            command,
            size=size,
            timeout=timeout,
            env=model_env(bundle),
            cwd=bundle.framework_dir,
        )

    @property
    def ready(self) -> bool:
        return self.pool.ready

    async def start(self) -> None:
        await self.pool.start()

    async def stop(self) -> None:
        await self.pool.stop()

    async def run(self, inputs: list[str]) -> BatchResult:
        reply = await self.pool.call({"inputs": inputs})
        if not reply.get("ok"):
            raise RunFailed(f"{self.api.name} failed", str(reply.get("error", "")))
        rows = reply.get("rows")
        if not isinstance(rows, list) or len(rows) != len(inputs):
            raise RunFailed(f"the {self.api.name} model returned the wrong number of rows")
        errors = {int(k): str(v) for k, v in dict(reply.get("errors") or {}).items()}
        return BatchResult(rows=rows, errors=errors)


class WarmScriptRunner(ScriptRunner):
    """A legacy ``python <script>.py $2 $3`` API run warm.

    A warm process per slot has imported the script's imports and run it once on the
    example input (so lazy imports and caches are loaded), and keeps a child forked ahead;
    each run is that child executing the script as ``__main__``. Files, timeouts and output
    checks are the cold runner's.
    """

    WARM_UP_ROWS = 5

    def __init__(self, bundle: Bundle, api: ApiDefinition, *, concurrency: int, timeout: float):
        super().__init__(bundle, api, concurrency=concurrency, timeout=timeout)
        if not api.warm_script:
            raise ValueError(f"{api.name} has no warm script")
        self.script = str(bundle.framework_dir / api.warm_script)
        self._warm_up_dir: Path | None = None
        self.pool = ProcessPool(
            f"{api.name} warm runner",
            [bundle.manifest.environment.python, str(bundle.path / "app" / "warm.py"), self.script],
            size=concurrency,
            timeout=timeout,
            env=self._env,
            cwd=bundle.framework_dir,
        )

    @property
    def ready(self) -> bool:
        return self.pool.ready

    async def start(self) -> None:
        await super().start()
        if self.api.example_input:
            folder = Path(tempfile.mkdtemp(prefix=f"{self.api.name}-warm-up-", dir=self._tmp_root))
            write_input_csv(folder / "input.csv", self.api.example_input[: self.WARM_UP_ROWS])
            self.pool.command += [
                str(folder / "input.csv"),
                str(folder / "output.csv"),
                str(self.bundle.framework_dir),
            ]
            self._warm_up_dir = folder
        await self.pool.start()

    async def stop(self) -> None:
        await self.pool.stop()
        if self._warm_up_dir is not None:
            shutil.rmtree(self._warm_up_dir, ignore_errors=True)

    async def _execute(self, command: list[str]) -> None:
        _, _, framework, input_csv, output_csv = command
        log = Path(output_csv).with_name("run.log")
        reply = await self.pool.call(
            {"argv": [self.script, input_csv, output_csv], "cwd": framework, "log": str(log)}
        )
        code = int(reply.get("code", 1))
        if code != 0:
            text = log.read_text(errors="replace") if log.exists() else ""
            raise RunFailed(f"{self.api.name} exited with code {code}", tail(text))
