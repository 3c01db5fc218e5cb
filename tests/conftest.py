"""Shared test helpers: paths of the repository, its fixtures and the demo model."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import DATA, pack_fixture

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
DEMO = ROOT / "examples" / "eos-demo"
__all__ = ["DATA", "DEMO", "FIXTURES", "ROOT"]


@pytest.fixture
def eos(tmp_path: Path) -> Path:
    """An empty EOS folder for one test."""
    path = tmp_path / "eos"
    path.mkdir()
    return path


@pytest.fixture(scope="session")
def packed(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Pack a fixture of ``tests/fixtures/`` once per session (``--system``); its bundle folder.

    ``packed("stdlib-simple")`` runs the pack-time example check; ``packed(name, check=False)``
    skips it, for fixtures built to crash or hang. Tests share the bundle: treat it as read-only.
    """
    root = tmp_path_factory.mktemp("repository")
    bundles: dict[tuple[str, bool], Path] = {}

    def pack_once(name: str, *, check: bool = True) -> Path:
        if (name, check) not in bundles:
            bundles[name, check] = pack_fixture(
                name, root / ("checked" if check else "unchecked"), check=check
            )
        return bundles[name, check]

    return pack_once
