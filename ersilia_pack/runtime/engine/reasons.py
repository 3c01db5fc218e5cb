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
