"""Ways to run one batch of inputs through a model: a script per run, or load-once workers.

A runner only runs and reports: which rows came back and which rows were malformed. What to
do about a failed batch (probe, split, null rows) is the engine's decision alone.

Load-once workers and warm runs have two shapes. Forked (the default): one model-side parent
per API loads once and forks a child per slot or per run, so the slots share what the load
made (ForkedPool). Separate (``--separate-workers``, or an API the pack found unsafe to fork):
one process per slot, each loading on its own (ProcessPool).
"""

from __future__ import annotations

import asyncio
import csv
import json
import logging
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ersilia_pack.runtime.bundle.manifest import ApiDefinition, Bundle
from ersilia_pack.runtime.engine.processes import (
    ForkedPool,
    OutputTail,
    ProcessDied,
    ProcessPool,
    RunError,
    RunFailed,
    RunTimeout,
    die_with_server,
    drain,
    guarded,
    reap,
)
from ersilia_pack.runtime.engine.reasons import empty_row_lines
from ersilia_pack.runtime.engine.workspace import Workspace, WorkspacePool
from ersilia_pack.runtime.inputs import InputError, write_csv

__all__ = [
    "BatchResult",
    "LoadOnceRunner",
    "RunError",
    "RunFailed",
    "RunTimeout",
    "Runner",
    "ScriptRunner",
    "model_env",
]

logger = logging.getLogger("ersilia_pack.runtime")

_THREAD_VARIABLES = (
    "OMP_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "MKL_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
)
_LOG_TAIL_BYTES = 65536
# A model may write one huge field (a fingerprint as text, a SMILES list); the csv module's
# default limit of 131,072 characters would turn it into an error of ours.
csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


@dataclass
class BatchResult:
    """Raw rows in the API's column order (``None`` where the model gave nothing), and the
    rows that came back malformed, with what was wrong."""

    rows: list[list[Any] | None]
    errors: dict[int, str] = field(default_factory=dict)
    # for rows the model left empty in a run that succeeded: the line of its output that says
    # why (see reasons.empty_row_lines)
    said: dict[int, str] = field(default_factory=dict)


class Runner(Protocol):
    """What the engine needs from a way of running a model."""

    concurrency: int

    @property
    def ready(self) -> bool: ...

    @property
    def load_error(self) -> str | None: ...

    @property
    def restarts(self) -> int: ...

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    async def run(self, inputs: list[str], *, timeout: float) -> BatchResult: ...


def model_env(bundle: Bundle) -> dict[str, str]:
    """Process environment for model code: its environment first, numeric pools at one thread,
    and none of the server's own settings (keys, the store's URL and its password)."""
    base = {name: value for name, value in os.environ.items() if not name.startswith("ERSILIA_")}
    env = bundle.manifest.environment.process_env(base)
    for name in _THREAD_VARIABLES:
        env.setdefault(name, "1")
    return env


def align(header: list[str], rows: list[list[str]], api: ApiDefinition) -> BatchResult:
    """Put a script's output columns in the API's declared order.

    Columns are matched by name when the header names them all, else by position (with a
    warning when the names differ). A row whose every value is empty means the model could not
    handle that input; a row of the wrong width is reported as malformed.
    """
    names = api.column_names
    if not names or header == names:
        order = list(range(len(header)))
    elif set(names) <= set(header):
        order = [header.index(name) for name in names]
    elif len(header) == len(names):
        order = list(range(len(names)))
        _warn_once(
            api.name,
            f"{api.name}: the model's output header {header[:8]} does not name the declared "
            f"columns {names[:8]}; matching them by position",
        )
    else:
        raise RunFailed(f"the model wrote columns {header[:8]} but {api.name} declares {names[:8]}")
    width = len(header)
    result = BatchResult(rows=[])
    for position, row in enumerate(rows):
        if len(row) != width and any(value.strip() for value in row):
            result.rows.append(None)
            result.errors[position] = f"the model wrote {len(row)} values for {width} columns"
            continue
        values = [row[i] if i < len(row) else "" for i in order]
        result.rows.append(None if all(value.strip() == "" for value in values) else values)
    return result


_WARNED: set[str] = set()


def _warn_once(key: str, message: str) -> None:
    if key not in _WARNED:
        _WARNED.add(key)
        logger.warning("%s", message)


def write_input_csv(path: Path, inputs: list[str]) -> None:
    """The input file a script reads: a header row, then one input per line.

    An input that cannot be one line never reaches the file (RunFailed, so the engine gives
    it a null row): it would shift every later row onto another input.
    """
    try:
        with path.open("w", newline="", encoding="utf-8") as handle:
            write_csv(handle, inputs)
    except InputError as error:
        raise RunFailed(str(error)) from error


def read_output_csv(path: Path, expected: int) -> tuple[list[str], list[list[str]]]:
    """The header and rows a script wrote; RunFailed unless there is one row per input."""
    try:
        with path.open(newline="", encoding="utf-8", errors="replace") as handle:
            rows = list(csv.reader(handle))
    except FileNotFoundError as error:
        raise RunFailed("the model wrote no output file") from error
    except csv.Error as error:
        raise RunFailed(f"the model wrote an output file that is not CSV: {error}") from error
    if not rows:
        raise RunFailed("the model wrote an empty output file (no header row)")
    header, body = rows[0], rows[1:]
    if body and not body[-1]:
        body = body[:-1]
    if len(body) != expected:
        raise RunFailed(f"the model wrote {len(body)} rows for {expected} inputs")
    return [name.strip() for name in header], body


def _file_tail(path: Path) -> str:
    """The last lines of a log file a run wrote, reading no more than its end."""
    try:
        with path.open("rb") as handle:
            handle.seek(0, os.SEEK_END)
            handle.seek(max(0, handle.tell() - _LOG_TAIL_BYTES))
            data = handle.read()
    except FileNotFoundError:
        return ""
    tail = OutputTail()
    tail.feed(data)
    tail.close()
    return tail.text()


def _log_output(api: str, text: str) -> None:
    if text.strip():
        logger.info("%s wrote:\n%s", api, text)


class _ColdExecutor:
    """A fresh ``bash <api>.sh FRAMEWORK INPUT OUTPUT`` per run."""

    warm = False

    def __init__(self, bundle: Bundle, api: ApiDefinition, env: dict[str, str]) -> None:
        self.script = bundle.framework_dir / api.script
        self.framework = bundle.framework_dir
        self.api = api
        self.env = env

    @property
    def ready(self) -> bool:
        return True

    load_error: str | None = None
    restarts = 0

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    async def execute(self, workspace: Workspace, timeout: float) -> str:
        """Run the script; what it printed (stdout and stderr), or RunError."""
        command = [
            "bash",
            str(self.script),
            str(self.framework),
            str(workspace.input_csv),
            str(workspace.output_csv),
        ]
        # The run's process group dies with the server, even one killed with SIGKILL.
        process = await asyncio.create_subprocess_exec(
            *guarded(command),
            cwd=workspace.cwd,
            env={**self.env, **workspace.variables},
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=die_with_server(),
        )
        output = OutputTail(self.api.name)
        draining = asyncio.create_task(drain(process.stdout, output))
        try:
            await asyncio.wait_for(process.wait(), timeout)
        except asyncio.TimeoutError as error:
            raise RunTimeout(f"{self.api.name} did not finish within {timeout:g} s") from error
        finally:
            await reap(process)  # nothing the script started outlives its run
            draining.cancel()
            await asyncio.gather(draining, return_exceptions=True)
            transport = getattr(process, "_transport", None)
            if transport is not None:
                transport.close()
        if process.returncode != 0:
            raise RunFailed(f"{self.api.name} exited with code {process.returncode}", output.text())
        _log_output(self.api.name, output.text())
        return output.text()


class _OnAPool:
    """A runner or executor whose model processes are one pool: readiness, load errors,
    restarts, start and stop are the pool's."""

    pool: ForkedPool | ProcessPool

    @property
    def ready(self) -> bool:
        return self.pool.ready

    @property
    def load_error(self) -> str | None:
        return self.pool.load_error

    @property
    def restarts(self) -> int:
        return self.pool.replaced

    async def start(self) -> None:
        await self.pool.start()

    async def stop(self) -> None:
        await self.pool.stop()


class _WarmExecutor(_OnAPool):
    """A warm process forks a child per run that executes the script as __main__.

    The warm process has imported the script's imports and run it once on the example input
    in a workspace of its own (so lazy imports and caches are loaded), and keeps one child
    forked ahead. Forked (the default), one warm process runs up to ``size`` runs at once;
    with ``fork=False`` there is a warm process per slot, one run at a time each.
    """

    warm = True
    WARM_UP_ROWS = 5

    def __init__(
        self,
        bundle: Bundle,
        api: ApiDefinition,
        env: dict[str, str],
        *,
        size: int,
        load_timeout: float,
        runs_root: Path,
        fork: bool = True,
        in_process: bool = False,
    ) -> None:
        if not api.warm_script:
            raise ValueError(f"{api.name} has no warm script")
        self.api = api
        self.script = str(bundle.framework_dir / api.warm_script)
        self._framework = bundle.framework_dir
        self._runs_root = runs_root
        self._killed = 0
        command = [bundle.manifest.environment.python, str(bundle.path / "app" / "warm.py")]
        if in_process:  # a process per slot, each running its jobs itself
            fork = False
            command += [self.script, "--in-process"]
        else:
            command += [self.script, "--forked", str(size)] if fork else [self.script]
        self.pool: ForkedPool | ProcessPool = (ForkedPool if fork else ProcessPool)(
            f"{api.name} warm runner",
            command,
            size=size,
            load_timeout=load_timeout,
            env=env,
            prepare=self._prepare,
        )

    def _prepare(self) -> tuple[Path, dict[str, str], list[str], Any]:
        workspace = Workspace(self._runs_root, self._framework, f"{self.api.name}-warm")
        args: list[str] = []
        if self.api.example_input:
            write_input_csv(workspace.input_csv, self.api.example_input[: self.WARM_UP_ROWS])
            args = [str(workspace.input_csv), str(workspace.output_csv), str(workspace.cwd)]
        return workspace.cwd, workspace.variables, args, workspace.remove

    @property
    def restarts(self) -> int:
        """Warm processes replaced, and runs killed by a signal (each run is a process)."""
        return self.pool.replaced + self._killed

    async def execute(self, workspace: Workspace, timeout: float) -> str:
        """Run the script in a warm process; what it printed, or RunError."""
        job = {
            "argv": [self.script, str(workspace.input_csv), str(workspace.output_csv)],
            "cwd": str(workspace.cwd),
            "log": str(workspace.log),
            "env": workspace.variables,
        }
        reply = await self.pool.call(job, timeout=timeout)
        code = int(reply.get("code", 1))
        text = _file_tail(workspace.log)
        if code < 0:  # killed by a signal from outside (the OOM killer, say): worth a retry
            self._killed += 1
            raise ProcessDied(f"{self.api.name} was killed by signal {-code}", text)
        if code != 0:
            raise RunFailed(f"{self.api.name} exited with code {code}", text)
        _log_output(self.api.name, text)
        return text


class ScriptRunner:
    """A ``<api>.sh`` API: each batch is a run in a workspace of its own, cold or warm."""

    def __init__(
        self,
        bundle: Bundle,
        api: ApiDefinition,
        *,
        concurrency: int,
        warm: bool = False,
        load_timeout: float = 600.0,
        fork: bool = True,
        in_process: bool = False,
    ) -> None:
        self.bundle = bundle
        self.api = api
        self.concurrency = concurrency
        self._runs_root = bundle.state_dir / "runs"
        self._workspaces = WorkspacePool(self._runs_root, bundle.framework_dir, api.name)
        env = model_env(bundle)
        self.executor: _ColdExecutor | _WarmExecutor = (
            _WarmExecutor(
                bundle,
                api,
                env,
                size=concurrency,
                load_timeout=load_timeout,
                runs_root=self._runs_root,
                fork=fork,
                in_process=in_process,
            )
            if warm
            else _ColdExecutor(bundle, api, env)
        )

    @property
    def warm(self) -> bool:
        return self.executor.warm

    @property
    def ready(self) -> bool:
        return self.executor.ready

    @property
    def load_error(self) -> str | None:
        return self.executor.load_error

    @property
    def restarts(self) -> int:
        return self.executor.restarts

    async def start(self) -> None:
        await self.executor.start()

    async def stop(self) -> None:
        await self.executor.stop()
        self._workspaces.close()

    async def run(self, inputs: list[str], *, timeout: float) -> BatchResult:
        try:
            workspace = self._workspaces.take()
        except OSError as error:
            logger.error("a folder for a run of %s could not be made: %s", self.api.name, error)
            raise RunFailed("the server could not make a folder for the run") from error
        try:
            write_input_csv(workspace.input_csv, inputs)
            printed = await self.executor.execute(workspace, timeout)
            header, rows = read_output_csv(workspace.output_csv, len(inputs))
        finally:
            self._workspaces.give(workspace)
        result = align(header, rows, self.api)
        empty = [i for i, row in enumerate(result.rows) if row is None and i not in result.errors]
        result.said = empty_row_lines(inputs, empty, printed)
        return result


class LoadOnceRunner(_OnAPool):
    """A ``<api>.py`` API: ``load()`` runs once, then batches are answered over a pipe.

    Forked (the default), one parent loads and forks ``size`` slot children; with
    ``fork=False`` each slot is a worker of its own that loads. Every slot (and the parent)
    runs in a workspace of its own (working directory and ``TMPDIR``), removed when its
    process stops.
    """

    warm = True

    def __init__(
        self,
        bundle: Bundle,
        api: ApiDefinition,
        *,
        size: int,
        load_timeout: float = 600.0,
        fork: bool = True,
        devices: list[str] | None = None,
    ):
        self.bundle = bundle
        self.api = api
        self.concurrency = size
        # GPUs to spread the processes over, one CUDA_VISIBLE_DEVICES each (separate only)
        self.devices = list(devices or [])
        self._on_device = dict.fromkeys(self.devices, 0)
        self.fork = fork and not self.devices
        command = [
            bundle.manifest.environment.python,
            str(bundle.path / "app" / "worker.py"),
            str(bundle.framework_dir / api.script),
            api.class_name or "",
        ]
        self.pool: ForkedPool | ProcessPool = (ForkedPool if self.fork else ProcessPool)(
            f"{api.name} worker",
            command,
            size=size,
            load_timeout=load_timeout,
            env=model_env(bundle),
            prepare=self._prepare,
        )

    def _workspace(self) -> Workspace:
        return Workspace(
            self.bundle.state_dir / "runs", self.bundle.framework_dir, f"{self.api.name}-worker"
        )

    def _prepare(self) -> tuple[Path, dict[str, str], list[str], Any]:
        workspace = self._workspace()
        if self.devices:  # the GPU with the fewest of this API's processes
            device = min(self.devices, key=lambda each: self._on_device[each])
            self._on_device[device] += 1

            def release() -> None:
                self._on_device[device] -= 1
                workspace.remove()

            variables = {**workspace.variables, "CUDA_VISIBLE_DEVICES": device}
            return workspace.cwd, variables, [], release
        if not self.fork:
            return workspace.cwd, workspace.variables, [], workspace.remove
        made = [workspace]
        try:
            for _ in range(self.concurrency):
                made.append(self._workspace())
        except OSError:
            for each in made:
                each.remove()
            raise
        slots = [{"cwd": str(each.cwd), "env": each.variables} for each in made[1:]]

        def remove() -> None:
            for each in made:
                each.remove()

        return workspace.cwd, workspace.variables, [json.dumps(slots)], remove

    async def run(self, inputs: list[str], *, timeout: float) -> BatchResult:
        reply = await self.pool.call({"inputs": inputs}, timeout=timeout)
        if not reply.get("ok"):
            trace = str(reply.get("error", ""))
            logger.info("%s: predict() raised:\n%s", self.api.name, trace)
            last = next((line for line in reversed(trace.splitlines()) if line.strip()), "")
            raise RunFailed(last.strip() or f"{self.api.name} failed")
        rows = reply.get("rows")
        if not isinstance(rows, list) or len(rows) != len(inputs):
            count = len(rows) if isinstance(rows, list) else "no"
            raise RunFailed(f"predict() returned {count} rows for {len(inputs)} inputs")
        return rows_in_order(rows, self.api)


def rows_in_order(rows: list[Any], api: ApiDefinition) -> BatchResult:
    """A load-once model's rows (lists in column order, dicts by name, scalars, None) as lists
    in the declared column order; a row of the wrong width or lacking columns is malformed."""
    names = api.column_names
    result = BatchResult(rows=[])
    for position, row in enumerate(rows):
        values: list[Any] | None
        problem = None
        if row is None:
            values = None
        elif isinstance(row, dict):
            missing = [name for name in names if name not in row]
            values = [row.get(name) for name in names] if names else list(row.values())
            if missing:
                problem = f"predict() gave a row without {', '.join(missing[:5])}"
        elif isinstance(row, list):
            values = row
            if names and len(row) != len(names):
                problem = f"predict() gave {len(row)} values for {len(names)} columns"
        else:
            values = [row]
            if names and len(names) != 1:
                problem = f"predict() gave 1 value for {len(names)} columns"
        if problem:
            result.rows.append(None)
            result.errors[position] = problem
        else:
            result.rows.append(values)
    return result
