"""The one way inputs become rows, shared by ``POST /<api>`` and the jobs.

Look the inputs up in the result cache, compute what is missing through the model service,
keep the fresh rows, and hand back cached and computed rows in input order. It sits above the
engine and the state, which know nothing of each other.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from ersilia_pack.runtime.engine.service import ModelService, Prediction
from ersilia_pack.runtime.settings import ServeSettings
from ersilia_pack.runtime.state.cache import ResultCache, cache_namespace
from ersilia_pack.runtime.state.store import Store

NOT_CACHED = "not in the result cache (cache_only)"


class Predictor:
    """The model service behind a result cache (none: every input is computed)."""

    # Told of every answered prediction: API, inputs the model was run for, the prediction,
    # seconds taken. The metrics layer sets it.
    on_prediction: Callable[[str, int, Prediction, float], None] | None = None

    def __init__(self, service: ModelService, cache: ResultCache | None = None) -> None:
        self.service = service
        self.cache = cache

    @classmethod
    def for_bundle(cls, service: ModelService, store: Store, settings: ServeSettings) -> Predictor:
        """A served bundle's predictor: its cache is in the store, and off where the output
        varies from run to run (caching would freeze one draw)."""
        bundle = service.bundle
        cache = ResultCache(
            store,
            namespace=cache_namespace(bundle.manifest),
            size=settings.cache_size,
            enabled=not bundle.output_varies,
        )
        return cls(service, cache)

    async def predict(
        self,
        api_name: str,
        inputs: list[str],
        *,
        fetch_cache: bool = True,
        save_cache: bool = True,
        cache_only: bool = False,
        background: bool = False,
    ) -> Prediction:
        """Rows of inputs through an API; PredictionError when the model itself fails.

        Only inputs missing from the result cache are computed; ``cache_only`` never runs the
        model, and inputs not in the cache get null rows. Null rows are never cached.
        """
        started = time.perf_counter()
        cache = self.cache if self.cache is not None and self.cache.enabled else None
        hits = await cache.fetch(api_name, inputs) if cache and (fetch_cache or cache_only) else {}
        todo = [] if cache_only else [value for value in inputs if value not in hits]
        # Called with nothing to compute too: an API whose self-check failed answers 503.
        prediction = await self.service.predict(api_name, todo, background=background)
        if cache and save_cache:
            pairs = enumerate(zip(todo, prediction.rows))
            fresh = {v: r for i, (v, r) in pairs if r is not None and i not in prediction.errors}
            await cache.save(api_name, fresh)
        if len(todo) != len(inputs):
            prediction = _in_input_order(inputs, hits, todo, prediction)
        if self.on_prediction is not None:
            self.on_prediction(api_name, len(todo), prediction, time.perf_counter() - started)
        return prediction


def _in_input_order(
    inputs: list[str], hits: dict[str, list[Any]], todo: list[str], computed: Prediction
) -> Prediction:
    """Cached and computed rows back in input order; inputs in neither get a null row."""
    by_input = {
        value: (row, computed.errors.get(i))
        for i, (value, row) in enumerate(zip(todo, computed.rows))
    }
    rows: list[list[Any] | None] = []
    errors: dict[int, str] = {}
    for i, value in enumerate(inputs):
        if value in hits:
            rows.append(hits[value])
            continue
        row, error = by_input.get(value, (None, NOT_CACHED))
        rows.append(row)
        if error:
            errors[i] = error
    return Prediction(rows=rows, errors=errors, cached=sum(value in hits for value in inputs))
