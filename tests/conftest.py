"""Shared test helpers: paths of the repository, its fixtures and the demo model."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import pack_fixture

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
DEMO = ROOT / "examples" / "eos-demo"
_DATA_NAME = "smiles-50k-molweight.csv"
# The shared data set lives beside the project, never inside it; ERSILIA_PACK_TEST_DATA
# points elsewhere when the clone is not next to it.
DATA = next(
    (
        folder / _DATA_NAME
        for folder in (
            Path(os.environ.get("ERSILIA_PACK_TEST_DATA", ROOT.parent / "shared" / "data")),
            Path("/work/shared/data"),
        )
        if (folder / _DATA_NAME).is_file()
    ),
    ROOT.parent / "shared" / "data" / _DATA_NAME,
)


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
