"""Helpers of the client and batch-command tests: fresh bundle copies, ports, polling.

Import as ``from clientkit import ...`` (pytest puts ``tests/client`` on ``sys.path``).
"""

from __future__ import annotations

import shutil
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

T = TypeVar("T")


def fresh_copy(bundle: Path, root: Path) -> Path:
    """A copy of a packed bundle in a repository folder of its own (no jobs, no cache);
    the repository folder."""
    target = root / bundle.parent.name / bundle.name
    shutil.copytree(bundle, target, ignore=shutil.ignore_patterns("state"))
    return target.parent


def free_port() -> int:
    """A port nothing listens on now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_for(check: Callable[[], T], *, within: float, what: str) -> T:
    """Poll ``check`` until it returns something true (a deadline, not a timing assertion)."""
    deadline = time.monotonic() + within
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what} after {within:g} s")
        time.sleep(0.05)
