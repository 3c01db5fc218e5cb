"""A served model: one engine per API, and typed predictions of what it computes.

The result cache is no concern of the engine: the predictor (``runtime/predictor.py``) looks
inputs up there and hands the engine only those it has to compute.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import math
import os
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ersilia_pack.runtime.bundle.columns import is_null, type_rows
from ersilia_pack.runtime.bundle.manifest import ApiDefinition, Bundle
from ersilia_pack.runtime.engine import gpus, workspace
from ersilia_pack.runtime.engine.batcher import ApiEngine, ModelBroken
from ersilia_pack.runtime.engine.reasons import public_reason
from ersilia_pack.runtime.engine.runners import (
    LoadOnceRunner,
    RunError,
    Runner,
    RunTimeout,
    ScriptRunner,
)
from ersilia_pack.runtime.engine.selfcheck import (
    FAILED,
    SKIPPED,
    ApiCheck,
    check_api,
    mode_of,
    try_mode,
)
from ersilia_pack.runtime.settings import ServeSettings

logger = logging.getLogger("ersilia_pack.runtime")

DEFAULT_BATCH = {"sh": 1000, "py": 256}
# The id of the HTTP request being answered, for log lines; the app's middleware sets it.
REQUEST_ID: ContextVar[str] = ContextVar("ersilia_pack_request_id", default="-")
NO_VALUES = "the model gave no values for this input"


class PredictionError(Exception):
    """A request the model could not answer; carries the HTTP status and a safe detail."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail


@dataclass
class Prediction:
    """Typed rows for a request, in input order, and why any null row is null."""

    rows: list[list[Any] | None]
    errors: dict[int, str] = field(default_factory=dict)
    cached: int = 0  # rows answered from the result cache


def available_cpus() -> int:
    """CPUs this process may use: its affinity, capped by a cgroup CPU quota (containers)."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cpus = min(cpus, max(1, math.ceil(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cpus)


def slots_per_api(settings: ServeSettings, api_count: int) -> int:
    """Processes per API: ``--workers`` when given, else the available CPUs shared among the
    APIs, and at least two where there are CPUs for it, so a job never holds the only slot."""
    if settings.workers:
        return settings.workers
    return max(1, min(available_cpus(), max(2, available_cpus() // max(1, api_count))))


def make_runner(
    bundle: Bundle,
    api: ApiDefinition,
    settings: ServeSettings,
    *,
    slots: int,
    devices: list[str] | None = None,
) -> Runner:
    """The runner an API gets: load-once workers for ``.py``; for ``.sh``, warm runs where the
    pack-time check found them equal to cold runs, else a fresh process per run. Slots are
    forked from one loaded parent unless the settings or the pack-time check say otherwise."""
    devices = list(devices or []) if api.decided.gpu else []
    if devices:  # one model copy per GPU (--gpu-workers), not one per CPU
        slots = gpus.gpu_slots(settings.gpu_workers, len(devices))
    slots = 1 if api.decided.serial else slots
    fork = api.decided.fork and not settings.separate_workers
    if api.kind == "py":
        return LoadOnceRunner(
            bundle,
            api,
            size=slots,
            load_timeout=settings.timeout,
            fork=fork,
            devices=devices,
        )
    warm = bool(api.decided.warm and api.warm_script and not settings.cold)
    return ScriptRunner(
        bundle,
        api,
        concurrency=slots,
        warm=warm,
        load_timeout=settings.timeout,
        fork=fork,
        in_process=api.decided.in_process,
    )


class ModelService:
    """Everything the app does with the model, independent of HTTP and of the stored state."""

    def __init__(self, bundle: Bundle, settings: ServeSettings) -> None:
        self.bundle = bundle
        self.settings = settings
        self.engines: dict[str, ApiEngine] = {}
        slots = slots_per_api(settings, len(bundle.manifest.apis))
        # One run per input only where the output is Fixed: a draw of a varying model is
        # never handed to another input, or to another request.
        dedupe = not bundle.output_varies
        self._dedupe = dedupe
        # whether the self-check compares values with the example output, or only its shape
        self._fixed = bundle.manifest.output_consistency.lower() == "fixed"
        # the GPUs processes may use, looked up once, where an API runs on a GPU
        on_gpu = any(api.decided.gpu for api in bundle.manifest.apis)
        self.gpus: list[str] = gpus.visible_gpus() if on_gpu else []
        self._slots = slots
        self.checks: dict[str, ApiCheck] = {}
        self.mode_changes: dict[str, int] = {}
        self._checking: list[asyncio.Task[None]] = []
        self._moving: dict[str, asyncio.Lock] = {}
        for api in bundle.manifest.apis:
            self.engines[api.name] = self.make_engine(api)
            self.checks[api.name] = ApiCheck(mode=mode_of(api, settings))
            self.mode_changes[api.name] = 0
            self._moving[api.name] = asyncio.Lock()

    def make_engine(self, api: ApiDefinition) -> ApiEngine:
        """A new engine for an API served as ``api`` says (warm, forked, serial)."""
        return ApiEngine(
            make_runner(self.bundle, api, self.settings, slots=self._slots, devices=self.gpus),
            batch_size=self.settings.batch_size or DEFAULT_BATCH[api.kind],
            timeout=self.settings.timeout,
            batch_wait=self.settings.batch_wait_ms / 1000,
            probe_input=api.example_input[0] if api.example_input else None,
            dedupe=self._dedupe,
        )

    async def _replace_engine(self, name: str, engine: ApiEngine, mode: str) -> None:
        """Serve an API through ``engine`` from now on; the old one is stopped."""
        old = self.engines[name]
        engine.runs, engine.run_seconds = old.runs, old.run_seconds
        self.engines[name] = engine
        self.checks[name].mode = mode
        self.mode_changes[name] += 1
        await old.stop()

    def api_ready(self, name: str) -> bool:
        """Whether an API answers now: loaded, and its self-check passed (or not run)."""
        return self.engines[name].ready and self.checks[name].serving

    def readiness(self) -> dict[str, dict[str, object]]:
        """Per API: ready or not, its self-check and the mode it is served in."""
        return {
            name: {
                "ready": self.api_ready(name),
                **self.checks[name].as_dict(),
                "device": self.device_of(name),
            }
            for name in self.engines
        }

    def device_of(self, name: str) -> str:
        """Where an API's model runs: ``cpu``, or ``cuda`` with the GPUs it is spread over."""
        if self.bundle.apis[name].decided.gpu and self.gpus:
            return f"cuda (GPUs {','.join(self.gpus)}, {self.settings.gpu_workers} per GPU)"
        return "cpu"

    def model_pids(self, name: str) -> list[int]:
        """Process ids of an API's long-lived model processes, where its pool has them."""
        runner = self.engines[name].runner
        pool = getattr(runner, "pool", None) or getattr(
            getattr(runner, "executor", None), "pool", None
        )
        return list(getattr(pool, "pids", []))

    def has_api(self, name: str) -> bool:
        """Whether the model serves an API of this name."""
        return name in self.engines

    def background_slots(self, api_name: str) -> int:
        """How many runs of background work (jobs) an API takes at once: all its slots but the
        one the engine keeps for interactive requests."""
        return max(1, self.slots(api_name) - 1)

    def slots(self, api_name: str) -> int:
        """How many runs of an API go at once."""
        return self.engines[api_name].runner.concurrency

    @property
    def ready(self) -> bool:
        return all(self.api_ready(name) for name in self.engines)

    async def start(self) -> None:
        swept = workspace.sweep(self.bundle.state_dir / "runs")
        if swept:
            logger.info("removed %d run folders that stopped servers left behind", swept)
        for engine in self.engines.values():
            await engine.start()
        for api in self.bundle.manifest.apis:
            check = self.checks[api.name]
            if not self.settings.self_check or not api.example_input:
                check.state = SKIPPED
                continue
            task = asyncio.create_task(
                check_api(
                    api,
                    self.settings,
                    check,
                    fixed=self._fixed,
                    current=functools.partial(self.engines.__getitem__, api.name),
                    make_engine=self.make_engine,
                    replace=functools.partial(self._replace_engine, api.name),
                )
            )
            self._checking.append(task)

    async def stop(self) -> None:
        for task in self._checking:
            task.cancel()
        await asyncio.gather(*self._checking, return_exceptions=True)
        for engine in self.engines.values():
            await engine.stop()

    async def _cold_instead(self, api: ApiDefinition) -> ApiEngine | None:
        """Once per API: where a warm run failed, a cold engine, when it reproduces the
        example, replaces the warm one. None when the API is not warm or cold fails too."""
        if not self.settings.fallback or mode_of(api, self.settings) != self.checks[api.name].mode:
            return None  # not wanted, or already moved
        if api.kind != "sh" or not (api.decided.warm and api.warm_script) or self.settings.cold:
            return None
        async with self._moving[api.name]:
            if mode_of(api, self.settings) != self.checks[api.name].mode:
                return self.engines[api.name]
            cold = api.with_decisions(warm=False)
            engine, _ = await try_mode(cold, self.settings, self.make_engine, fixed=self._fixed)
            if engine is None:
                return None
            logger.warning(
                "%s: a warm run failed where a cold run works; it is served cold from now on",
                api.name,
            )
            await self._replace_engine(api.name, engine, mode_of(cold, self.settings))
            return engine

    async def predict(
        self, api_name: str, inputs: list[str], *, background: bool = False
    ) -> Prediction:
        """Run inputs through an API: one typed row per input, in order, and why any null row
        is null; PredictionError when the model itself fails (or its self-check did)."""
        api = self.bundle.apis[api_name]
        check = self.checks[api_name]
        if check.state == FAILED:
            raise PredictionError(503, check.detail)
        try:
            engine = self.engines[api_name]
            try:
                outcomes = await engine.predict(inputs, background=background) if inputs else []
            except RunError as error:
                if isinstance(error, RunTimeout) or getattr(error, "timed_out", False):
                    raise
                cold = await self._cold_instead(api)
                if cold is None:
                    raise
                outcomes = await cold.predict(inputs, background=background)
        except (RunTimeout, ModelBroken) as error:
            if isinstance(error, ModelBroken) and not error.timed_out:
                raise _failure(api_name, error) from error
            logger.error("%s timed out [request id %s]: %s", api_name, REQUEST_ID.get(), error)
            raise PredictionError(504, public_reason(error.detail)) from error
        except RunError as error:
            raise _failure(api_name, error) from error
        errors = {
            i: public_reason(outcome.error or NO_VALUES, outcome.stderr_tail)
            for i, outcome in enumerate(outcomes)
            if outcome.error or outcome.row is None
        }
        failed = [i for i, outcome in enumerate(outcomes) if outcome.error]
        if failed and all(outcome.timed_out for outcome in outcomes):
            first = next(iter(errors.values()))
            logger.error("%s timed out [request id %s]: %s", api_name, REQUEST_ID.get(), first)
            raise PredictionError(504, first)
        if failed and len(failed) == len(outcomes) and not api.example_input:
            # With no example input to tell a broken model from bad inputs, all failing is
            # a model failure.
            first = next(iter(errors.values()))
            logger.error(
                "%s failed on every input [request id %s]: %s", api_name, REQUEST_ID.get(), first
            )
            raise PredictionError(502, f"{api_name} failed on every input: {first}")
        raw_rows = [outcome.row for outcome in outcomes]
        rows = type_rows(raw_rows, api.columns)
        for i, problem in misfits(raw_rows, rows, api).items():
            errors.setdefault(i, problem)
        return Prediction(rows=rows, errors=errors)


def misfits(
    raw_rows: list[list[Any] | None], rows: list[list[Any] | None], api: ApiDefinition
) -> dict[int, str]:
    """Rows with a value that does not fit its column's type (``1.5`` in an integer column):
    the value is null in the answer, and the row is counted as failed with the reason."""
    problems: dict[int, str] = {}
    for i, (raw, typed) in enumerate(zip(raw_rows, rows)):
        if raw is None or typed is None:
            continue
        for column, before, after in zip(api.columns, raw, typed):
            if after is None and not is_null(before):
                shown = str(before)[:40]
                problems[i] = f"column {column.name!r}: {shown!r} is not {_A[column.type]}"
                break
    return problems


_A = {"float": "a number", "integer": "an integer", "string": "a string", "other": "a value"}


def _failure(api_name: str, error: RunError) -> PredictionError:
    logger.error(
        "%s failed [request id %s]: %s\n%s",
        api_name,
        REQUEST_ID.get(),
        error.detail,
        error.stderr_tail,
    )
    return PredictionError(502, public_reason(error.detail, error.stderr_tail))
