"""The result cache: typed rows by (what was installed, API, input), kept in the store.

Every key covers what can change an output: the model hash and the install behind the bundle
(plan and variant, backend, installer, resolution date, Python, ersilia-pack version). So a
repacked model whose files changed, or the same model installed another way, never answers
from the rows of the other, even where both share a state folder or a Redis. Models whose
output varies from run to run are never cached: the predictor keeps their cache disabled.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

from ersilia_pack.runtime.bundle.manifest import Manifest
from ersilia_pack.runtime.state.store import Store

Row = list[Any]


def cache_namespace(manifest: Manifest) -> str:
    """A digest of everything in a bundle's manifest that can change what the model outputs.

    Left out: when and where it was packed (tag, time, environment path), whether an
    environment was reused and why a date or variant was chosen, so replicas and repacks that
    install the same way share rows.
    """
    narration = {"reused_environment", "as_of_source", "variant_reason"}
    install = manifest.install.model_dump(exclude=narration)
    material = {
        "model_hash": manifest.model_hash,
        "ersilia_pack_version": manifest.ersilia_pack_version,
        "backend": manifest.environment.backend,
        "python_version": manifest.environment.python_version,
        "variables": manifest.environment.variables,
        "install": install,
    }
    text = json.dumps(material, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


class ResultCache:
    """Rows of one bundle's APIs, bounded to ``size`` rows (the oldest go first)."""

    def __init__(self, store: Store, *, namespace: str, size: int, enabled: bool = True) -> None:
        self.store = store
        self.namespace = namespace
        self.size = size
        self.enabled = enabled and size > 0

    def key(self, api: str, value: str) -> bytes:
        return hashlib.sha256(f"{self.namespace}\0{api}\0{value}".encode()).digest()

    async def fetch(self, api: str, inputs: list[str]) -> dict[str, Row]:
        """Cached rows by input, for the inputs that are cached."""
        if not self.enabled or not inputs:
            return {}
        keys = {self.key(api, value): value for value in dict.fromkeys(inputs)}
        found = await asyncio.to_thread(self.store.cache_get, list(keys))
        return {keys[key]: json.loads(row) for key, row in found.items()}

    async def save(self, api: str, rows: dict[str, Row]) -> None:
        """Keep rows by input; only real rows belong here, never a failed input's null row."""
        if not self.enabled or not rows:
            return
        items = {
            self.key(api, value): json.dumps(row, separators=(",", ":"), allow_nan=False)
            for value, row in rows.items()
        }
        await asyncio.to_thread(self.store.cache_put, items, self.size)
