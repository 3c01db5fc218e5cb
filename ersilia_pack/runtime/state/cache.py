"""The result cache: typed rows by (model hash, API, input), kept in the store.

The model hash is part of every key, so a repacked model whose files changed never answers
from the rows of the old one. Models whose output varies from run to run are never cached.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from typing import Any

from ersilia_pack.runtime.bundle.manifest import Bundle
from ersilia_pack.runtime.settings import ServeSettings
from ersilia_pack.runtime.state.store import Store

Row = list[Any]


def output_varies(bundle: Bundle) -> bool:
    """Whether the card says the output changes between runs on the same input.

    Output Consistency "Variable", or a generative Task: caching those would freeze one draw.
    """
    if bundle.manifest.output_consistency.strip().lower() == "variable":
        return True
    task = bundle.card.get("Task") or ""
    tasks = task if isinstance(task, list) else [task]
    return any("generative" in str(item).lower() for item in tasks)


class ResultCache:
    """Rows of one bundle's APIs, bounded to ``size`` rows (the oldest go first)."""

    def __init__(self, store: Store, *, model_hash: str, size: int, enabled: bool = True) -> None:
        self.store = store
        self.model_hash = model_hash
        self.size = size
        self.enabled = enabled and size > 0

    @classmethod
    def for_bundle(cls, store: Store, bundle: Bundle, settings: ServeSettings) -> ResultCache:
        return cls(
            store,
            model_hash=bundle.manifest.model_hash,
            size=settings.cache_size,
            enabled=not output_varies(bundle),
        )

    def key(self, api: str, value: str) -> bytes:
        return hashlib.sha256(f"{self.model_hash}\0{api}\0{value}".encode()).digest()

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
