"""Fixtures of the Ersilia drop-in tests (tests/ersilia)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fixture_models import CondaStandin, ContainerPython


@pytest.fixture
def conda_standin(tmp_path: Path) -> CondaStandin:
    """The conda stand-in (not conda) with fresh state; pass ``.env`` to the commands."""
    root = tmp_path / "conda-standin"
    root.mkdir()
    return CondaStandin(root)


@pytest.fixture
def container_python(tmp_path: Path) -> ContainerPython:
    """A fresh container-like Python with ersilia-pack's console scripts, for ``--system``."""
    return ContainerPython.make(tmp_path / "container")
