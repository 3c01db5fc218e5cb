"""Helpers of the heavy-model tests: the manifest's API records and an uncached client."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient
from helpers import FIXTURES, app_client

TORCH_NET = FIXTURES / "torch-net"


def manifest_apis(bundle: Path) -> dict[str, dict[str, Any]]:
    """The manifest's record of each API, by name."""
    manifest = json.loads((bundle / "manifest.json").read_text())
    return {api["name"]: api for api in manifest["apis"]}


def uncached_client(bundle: Path, **settings: Any) -> TestClient:
    """A client of the bundle's app with the result cache off, so every input runs the model."""
    return app_client(bundle, cache_size=0, **settings)
