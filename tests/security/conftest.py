"""Packed models shared by the security suite (helpers live in security_helpers.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
from security_helpers import DEMO, FIXTURES, pack_repository


@pytest.fixture(scope="session")
def demo_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/eos-demo packed with --system, once per session."""
    return pack_repository(DEMO, tmp_path_factory.mktemp("demo-eos"))


@pytest.fixture(scope="session")
def faults_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/fixtures/security-faults packed with --system (no example check: it fails)."""
    return pack_repository(
        FIXTURES / "security-faults", tmp_path_factory.mktemp("faults-eos"), "--no-check"
    )
