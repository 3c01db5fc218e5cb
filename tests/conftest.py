"""Shared test helpers: paths of the repository, its fixtures and the demo model."""

from __future__ import annotations

from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
DEMO = ROOT / "examples" / "eos-demo"
DATA = ROOT.parent / "shared" / "data" / "smiles-50k-molweight.csv"


@pytest.fixture
def eos(tmp_path: Path) -> Path:
    """An empty EOS folder for one test."""
    path = tmp_path / "eos"
    path.mkdir()
    return path
