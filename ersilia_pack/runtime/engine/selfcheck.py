"""The serve-time self-check: each API's example, run the way it is served, before ready.

What the pack checked ran on the packing machine; the bundle may now run on another one (a
GPU, another CPU), with a checkpoint changed since, or where its warm mode fails. At start the
server runs each API's example once through the engine that will serve it. An API whose
output is Fixed must reproduce its example output (within the example check's tolerance);
any other is checked for shape (a row per input, values of their columns' types). Where the
served mode does not pass, the safer modes the pack knows are tried in turn (cold, a process
per slot, one run at a time) and the first that passes is kept; when none does, the API is
not ready and answers 503 with the reason.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from ersilia_pack.runtime.bundle.columns import type_rows
from ersilia_pack.runtime.bundle.examples import compare
from ersilia_pack.runtime.bundle.manifest import ApiDefinition
from ersilia_pack.runtime.engine.batcher import ApiEngine
from ersilia_pack.runtime.engine.processes import RunTimeout
from ersilia_pack.runtime.engine.reasons import public_reason
from ersilia_pack.runtime.settings import ServeSettings

logger = logging.getLogger("ersilia_pack.runtime")

MAX_SHOWN = 3
READY_POLL = 0.05

PENDING, PASSED, FAILED, SKIPPED = "pending", "passed", "failed", "skipped"


@dataclass
class ApiCheck:
    """Where one API's self-check stands, and in which mode the API is served."""

    state: str = PENDING
    mode: str = ""
    detail: str = ""
    seconds: float = 0.0

    @property
    def serving(self) -> bool:
        """Whether the check lets the API answer (it passed, or was not run)."""
        return self.state in (PASSED, SKIPPED)

    def as_dict(self) -> dict[str, object]:
        found: dict[str, object] = {"check": self.state, "mode": self.mode}
        if self.detail:
            found["detail"] = self.detail
        return found


def mode_of(api: ApiDefinition, settings: ServeSettings) -> str:
    """How an API runs, in words: warm or cold, forked or separate slots, serial or not."""
    if api.kind == "py":
        forked = api.decided.fork and not settings.separate_workers
        base = "load-once, forked slots" if forked else "load-once, a process per slot"
    else:
        base = "warm" if api.decided.warm and api.warm_script and not settings.cold else "cold"
        base += ", in-process" if base == "warm" and api.decided.in_process else ""
    return base + (", one run at a time" if api.decided.serial else "")


def safer_modes(api: ApiDefinition, settings: ServeSettings) -> list[ApiDefinition]:
    """The modes to try, in order, when the served one does not reproduce the example."""
    found: list[ApiDefinition] = []
    if api.kind == "sh" and api.decided.warm and api.warm_script and not settings.cold:
        found.append(api.with_decisions(warm=False))
    elif api.kind == "py" and api.decided.fork and not settings.separate_workers:
        found.append(api.with_decisions(fork=False))
    if not api.decided.serial:
        base = found[-1] if found else api
        found.append(base.with_decisions(serial=True))
    return found


class ExampleTimedOut(Exception):
    """The example did not finish within the run timeout: nothing is known of its output."""


async def example_problem(api: ApiDefinition, engine: ApiEngine, *, fixed: bool) -> str | None:
    """None when the engine reproduces the API's example (Fixed) or its shape, else why not;
    ExampleTimedOut when it did not finish in time."""
    inputs = api.example_input
    try:
        outcomes = await engine.predict(inputs)
    except Exception as error:  # a run error, a timeout
        detail = getattr(error, "detail", None) or f"{type(error).__name__}: {error}"
        if isinstance(error, RunTimeout) or getattr(error, "timed_out", False):
            raise ExampleTimedOut(public_reason(detail)) from error
        return f"the example failed: {public_reason(detail, getattr(error, 'stderr_tail', ''))}"
    if outcomes and all(outcome.timed_out for outcome in outcomes):
        raise ExampleTimedOut(public_reason(outcomes[0].error or "it did not finish in time"))
    if len(outcomes) != len(inputs):
        return f"{len(outcomes)} rows for {len(inputs)} example inputs"
    problems = []
    for index, outcome in enumerate(outcomes):
        expected = api.example_output[index] if index < len(api.example_output) else None
        expects_values = expected is None or any(value.strip() for value in expected)
        if (outcome.error or outcome.row is None) and expects_values:
            why = (
                public_reason(outcome.error, outcome.stderr_tail) if outcome.error else "no values"
            )
            problems.append(f"the example input {inputs[index][:80]!r} failed: {why}")
    if problems:
        return "; ".join(problems[:MAX_SHOWN])
    raw = [outcome.row for outcome in outcomes]
    rows = type_rows(raw, api.columns)
    for index, (before, after) in enumerate(zip(raw, rows)):
        if before is not None and after is not None and len(before) != len(api.columns):
            return f"row {index + 1} has {len(before)} values for {len(api.columns)} columns"
    if fixed and api.example_output:
        differences = compare(api, rows)
        if differences:
            more = len(differences) - MAX_SHOWN
            shown = "; ".join(differences[:MAX_SHOWN])
            return shown + (f" (and {more} more cells)" if more > 0 else "")
    return None


async def wait_ready(engine: ApiEngine, within: float) -> bool:
    """Wait for an engine's processes to be loaded (at most ``within`` seconds)."""
    deadline = time.monotonic() + within
    while not engine.ready:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(READY_POLL)
    return True


async def try_mode(
    api: ApiDefinition,
    settings: ServeSettings,
    make_engine: Callable[[ApiDefinition], ApiEngine],
    *,
    fixed: bool,
) -> tuple[ApiEngine | None, str]:
    """Start an engine serving ``api`` as it says (a safer mode) and run its example: the
    engine when it loads and reproduces the example (an API without one only has to load),
    else None and why not (the engine is stopped)."""
    candidate = make_engine(api)
    await candidate.start()
    if not await wait_ready(candidate, settings.timeout):
        problem: str | None = f"it did not load within {settings.timeout:g} s"
    elif not api.example_input:
        problem = None
    else:
        try:
            problem = await example_problem(api, candidate, fixed=fixed)
        except ExampleTimedOut as error:
            problem = f"the example did not finish in time ({error})"
    if problem is None:
        return candidate, ""
    await candidate.stop()
    return None, problem


async def check_api(
    api: ApiDefinition,
    settings: ServeSettings,
    check: ApiCheck,
    *,
    fixed: bool,
    current: Callable[[], ApiEngine],
    make_engine: Callable[[ApiDefinition], ApiEngine],
    replace: Callable[[ApiEngine, str], Awaitable[None]],
) -> None:
    """Check one API as served; try safer modes where it fails; record the outcome."""
    began = time.monotonic()
    check.mode = mode_of(api, settings)
    engine = current()
    while not engine.ready:  # a load that fails is retried by the engine; wait for it
        await asyncio.sleep(READY_POLL)
    try:
        why = await example_problem(api, engine, fixed=fixed)
    except ExampleTimedOut as error:
        # Slower than the run timeout: not evidence of wrong output. Served, unchecked.
        check.seconds = time.monotonic() - began
        check.state = SKIPPED
        check.detail = f"not checked: the example did not finish in time ({error})"
        logger.warning("%s: self-check %s", api.name, check.detail)
        return
    tried = [f"{check.mode}: {why}"] if why else []
    for safer in safer_modes(api, settings) if why else []:
        mode = mode_of(safer, settings)
        candidate, problem = await try_mode(safer, settings, make_engine, fixed=fixed)
        if candidate is not None:
            logger.warning(
                "%s did not reproduce its example when served %s (%s); it is served %s",
                api.name,
                check.mode,
                why,
                mode,
            )
            await replace(candidate, mode)
            check.mode = mode
            why = None
            break
        tried.append(f"{mode}: {problem}")
    check.seconds = time.monotonic() - began
    if why is None:
        check.state = PASSED
        logger.info(
            "%s reproduces its example, served %s (self-check: %.2f s)",
            api.name,
            check.mode,
            check.seconds,
        )
        return
    check.state = FAILED
    check.detail = f"{api.name} does not reproduce its example: " + " | ".join(tried)
    logger.error("%s (self-check: %.2f s)", check.detail, check.seconds)
