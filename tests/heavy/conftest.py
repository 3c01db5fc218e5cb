"""Heavy models: a PyTorch network, long calls, wide outputs, careless temporary files.

The torch fixtures are packed with ``--system``, so the test interpreter must have torch:
``pip install -e '.[dev,heavy]'`` (``.ci/run`` does).
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from typing import Any

import pytest
from helpers import FIXTURES

TORCH_NET = FIXTURES / "torch-net"


@pytest.fixture(scope="session")
def torch_installed() -> None:
    """Fail (never skip) when torch is missing: these tests are part of the default run."""
    if importlib.util.find_spec("torch") is None:
        pytest.fail("torch is not installed: pip install -e '.[dev,heavy]' (as .ci/run does)")


def manifest_apis(bundle: Path) -> dict[str, dict[str, Any]]:
    """The manifest's record of each API, by name."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    return {api["name"]: api for api in manifest["apis"]}
