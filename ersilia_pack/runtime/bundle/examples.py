"""An API's example: whether typed rows reproduce its example output, cell by cell.

The pack-time checks and the serve-time self-check compare the same way: numbers within a
relative 1e-4 of each other, everything else exactly, nulls equal only to nulls.
"""

from __future__ import annotations

import math
from typing import Any

from ersilia_pack.runtime.bundle.columns import convert_value
from ersilia_pack.runtime.bundle.manifest import ApiDefinition

RELATIVE_TOLERANCE = 1e-4
ABSOLUTE_TOLERANCE = 1e-12

Rows = list[list[Any] | None]


def same_value(expected: Any, actual: Any) -> bool:
    """Equal, or numbers within a relative 1e-4 (nulls equal nulls)."""
    if expected is None or actual is None:
        return expected is None and actual is None
    if isinstance(expected, (int, float)) and isinstance(actual, (int, float)):
        return math.isclose(
            expected, actual, rel_tol=RELATIVE_TOLERANCE, abs_tol=ABSOLUTE_TOLERANCE
        )
    return bool(expected == actual)


def by_how_much(expected: Any, actual: Any) -> str:
    """How far two numbers are apart (absolute and relative), for a report; else ''."""
    if isinstance(expected, (int, float)) and isinstance(actual, (int, float)):
        gap = abs(float(actual) - float(expected))
        scale = max(abs(float(expected)), abs(float(actual)))
        relative = gap / scale if scale else 0.0
        return f" (off by {gap:.3g}, {relative:.3g} relative)"
    return ""


def compare(api: ApiDefinition, rows: Rows) -> list[str]:
    """Differences between answered rows and the API's example output, one line each."""
    differences: list[str] = []
    for number, (expected_raw, actual) in enumerate(zip(api.example_output, rows), start=1):
        for position, column in enumerate(api.columns):
            raw = expected_raw[position] if position < len(expected_raw) else ""
            expected = convert_value(raw, column.type)
            value = actual[position] if actual is not None and position < len(actual) else None
            if not same_value(expected, value):
                differences.append(
                    f"{api.name}: row {number}, column {column.name!r} is "
                    f"{value!r}; the example output says {raw!r}{by_how_much(expected, value)}"
                )
    return differences


def row_differences(api: ApiDefinition, single: Rows, other: Rows, inputs: list[str]) -> list[str]:
    """Cells where ``other`` is not ``single`` within the tolerance, one line each."""
    found: list[str] = []
    for index, (left, right) in enumerate(zip(single, other)):
        if left is None or right is None:
            if left is not right:
                found.append(f"input {inputs[index][:80]!r} got {right!r}, a single run {left!r}")
            continue
        for position, (a, b) in enumerate(zip(left, right)):
            if not same_value(a, b):
                name = api.columns[position].name if position < len(api.columns) else position
                found.append(
                    f"input {inputs[index][:80]!r}, column {name!r}: {b!r} where a single run "
                    f"gave {a!r}{by_how_much(a, b)}"
                )
    return found
