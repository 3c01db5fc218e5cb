"""Heavy models: a PyTorch network, long calls, wide outputs, careless temporary files.

The torch fixtures are packed with ``--system``, so the test interpreter must have torch:
``pip install -e '.[dev,heavy]'`` (``.ci/run`` does).
"""

from __future__ import annotations

import importlib.util

import pytest


@pytest.fixture(scope="session")
def torch_installed() -> None:
    """Fail (never skip) when torch is missing: these tests are part of the default run."""
    if importlib.util.find_spec("torch") is None:
        pytest.fail("torch is not installed: pip install -e '.[dev,heavy]' (as .ci/run does)")
