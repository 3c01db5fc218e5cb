"""Failure reasons fit for a caller: the last line of stderr, without paths or secrets."""

from __future__ import annotations

import os
import re

_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)
_PATH = re.compile(r"(?:[A-Za-z]:)?(?:/[^\s/:'\"]+)+/([^\s/:'\"]+)")


def public_reason(detail: str, stderr_tail: str = "") -> str:
    """A failure reason fit for a caller: the last line of stderr, without file paths or secrets."""
    last = next((line.strip() for line in reversed(stderr_tail.splitlines()) if line.strip()), "")
    text = f"{detail}: {last}" if last else detail
    for name, value in os.environ.items():
        if len(value) >= 6 and _SECRET_NAME.search(name) and value in text:
            text = text.replace(value, "[redacted]")
    return _PATH.sub(r"\1", text)[:500]


def _mentions(line: str, value: str) -> bool:
    """Whether ``line`` names ``value`` as a whole word (``C`` is not named by ``CCO``)."""
    if not value.strip():
        return False
    pattern = rf"(?<![^\s'\"`(\[{{<,;:=]){re.escape(value)}(?![^\s'\"`)\]}}>,;:.])"
    return re.search(pattern, line) is not None


def empty_row_lines(inputs: list[str], empty: list[int], printed: str) -> dict[int, str]:
    """For the rows a run that succeeded left empty (positions in ``inputs``), the line of what
    it printed that says why: the last line naming that input, or else the run's last line
    when that line names none of the run's inputs (it may be about any of them: a run holds
    several inputs, and a line naming another input is not this one's reason)."""
    lines = [line.strip() for line in printed.splitlines() if line.strip()]
    if not lines or not empty:
        return {}
    last = lines[-1]
    last_is_general = not any(_mentions(last, value) for value in set(inputs))
    said: dict[int, str] = {}
    for i in empty:
        own = next((line for line in reversed(lines) if _mentions(line, inputs[i])), None)
        if own is not None:
            said[i] = own
        elif last_is_general:
            said[i] = last
    return said
