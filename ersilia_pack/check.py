"""The pack-time check: run the packed model on its examples and compare with their output."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ersilia_pack.runtime.bundle.columns import convert_value, type_rows
from ersilia_pack.runtime.bundle.manifest import ApiDefinition, Bundle, load_bundle
from ersilia_pack.runtime.engine.runners import RunError, ScriptRunner
from ersilia_pack.runtime.engine.service import ModelService, PredictionError
from ersilia_pack.runtime.settings import ServeSettings

logger = logging.getLogger("ersilia_pack")

RELATIVE_TOLERANCE = 1e-4
WARM_CHECK_MIN_SECONDS = 30.0
MAX_REPORTED = 10


@dataclass
class CheckReport:
    """What the example check found, per API."""

    checked: list[str] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    warm: dict[str, bool] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return not self.differences and not self.failures


def same_value(expected: Any, actual: Any) -> bool:
    """Equal, or numbers within a relative 1e-4 (nulls equal nulls)."""
    if expected is None or actual is None:
        return expected is None and actual is None
    if isinstance(expected, (int, float)) and isinstance(actual, (int, float)):
        return math.isclose(expected, actual, rel_tol=RELATIVE_TOLERANCE, abs_tol=1e-12)
    return bool(expected == actual)


def same_rows(first: list[list[Any] | None], second: list[list[Any] | None]) -> bool:
    """Two typed results agree row by row and value by value."""
    if len(first) != len(second):
        return False
    for left, right in zip(first, second):
        if left is None or right is None:
            if left is not right:
                return False
        elif len(left) != len(right) or not all(map(same_value, left, right)):
            return False
    return True


async def warm_agrees(
    bundle: Bundle, api: ApiDefinition, cold_rows: list[list[Any] | None], timeout: float
) -> bool:
    """Run the example input warm; True only when it gives exactly what the cold run gave."""
    runner = ScriptRunner(bundle, api, concurrency=1, warm=True, load_timeout=timeout)
    await runner.start()
    try:
        result = await runner.run(api.example_input, timeout=timeout)
    except RunError as error:
        logger.info("%s runs cold: its warm run failed (%s)", api.name, error.detail)
        return False
    finally:
        await runner.stop()
    warm_rows = type_rows(result.rows, api.columns)
    if not same_rows(cold_rows, warm_rows):
        logger.info("%s runs cold: its warm run differs from the cold run", api.name)
        return False
    logger.info("%s runs warm: its warm run matches the cold run", api.name)
    return True


def compare(api: ApiDefinition, rows: list[list[Any] | None]) -> list[str]:
    """Differences between typed rows and the API's example output, one line each."""
    differences: list[str] = []
    for number, (expected_raw, actual) in enumerate(zip(api.example_output, rows), start=1):
        for position, column in enumerate(api.columns):
            raw = expected_raw[position] if position < len(expected_raw) else ""
            expected = convert_value(raw, column.type)
            value = actual[position] if actual is not None and position < len(actual) else None
            if not same_value(expected, value):
                differences.append(
                    f"{api.name}: row {number}, column {column.name!r} is "
                    f"{value!r}; the example output says {raw!r}"
                )
    return differences


async def _check(bundle_dir: Path, settings: ServeSettings) -> CheckReport:
    bundle = load_bundle(bundle_dir)
    report = CheckReport()
    service = ModelService(bundle, settings)
    await service.start()
    try:
        for api in bundle.manifest.apis:
            if not api.example_input:
                continue
            began = time.monotonic()
            try:
                prediction = await service.predict(api.name, api.example_input)
            except PredictionError as error:
                report.failures.append(f"{api.name}: the example input failed: {error.detail}")
                continue
            report.checked.append(api.name)
            if api.example_output:
                report.differences.extend(compare(api, prediction.rows))
            if api.warm_script:
                # A warm run that hangs (say, a fork after a library started threads) must not
                # hold the pack for the whole run timeout: it gets ten times the cold run.
                cold_seconds = time.monotonic() - began
                limit = min(settings.timeout, max(WARM_CHECK_MIN_SECONDS, 10 * cold_seconds))
                report.warm[api.name] = await warm_agrees(bundle, api, prediction.rows, limit)
    finally:
        await service.stop()
    return report


def check_examples(bundle_dir: Path, *, timeout: float = 600.0) -> CheckReport:
    """Run every API of a bundle on its example input and compare with its example output.

    Legacy scripts of the warm shape also run warm; ``report.warm`` says where both agree.
    """
    settings = ServeSettings(workers=1, timeout=timeout, cold=True)
    return asyncio.run(_check(bundle_dir, settings))
