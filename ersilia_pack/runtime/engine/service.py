"""A served model: one engine per API, and typed predictions for the HTTP layer."""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any

from ersilia_pack.runtime.bundle.columns import type_rows
from ersilia_pack.runtime.bundle.manifest import ApiDefinition, Bundle
from ersilia_pack.runtime.engine.batcher import ApiEngine
from ersilia_pack.runtime.engine.runners import (
    LoadOnceRunner,
    RunError,
    Runner,
    RunTimeout,
    ScriptRunner,
    WarmScriptRunner,
)
from ersilia_pack.runtime.settings import ServeSettings
from ersilia_pack.runtime.state.cache import ResultCache

logger = logging.getLogger("ersilia_pack.runtime")

DEFAULT_BATCH = {"sh": 1000, "py": 256}
# The id of the HTTP request being answered, for log lines; the app's middleware sets it.
REQUEST_ID: ContextVar[str] = ContextVar("ersilia_pack_request_id", default="-")
_SECRET_NAME = re.compile(r"KEY|TOKEN|SECRET|PASSWORD|PASSWD|CREDENTIAL", re.IGNORECASE)
_PATH = re.compile(r"(?:[A-Za-z]:)?(?:/[^\s/:'\"]+)+/([^\s/:'\"]+)")


def public_reason(detail: str, stderr_tail: str = "") -> str:
    """A failure reason fit for a caller: the last line of stderr, without file paths or secrets."""
    last = next((line.strip() for line in reversed(stderr_tail.splitlines()) if line.strip()), "")
    text = f"{detail}: {last}" if last else detail
    for name, value in os.environ.items():
        if len(value) >= 6 and _SECRET_NAME.search(name) and value in text:
            text = text.replace(value, "[redacted]")
    return _PATH.sub(r"\1", text)[:500]


NO_VALUES = "the model gave no values for this input"


class PredictionError(Exception):
    """A request the model could not answer; carries the HTTP status and a safe detail."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(detail)
        self.status_code = status_code
        self.detail = detail


@dataclass
class Prediction:
    """Typed rows for a request, in input order, and why any null row is null."""

    rows: list[list[Any] | None]
    errors: dict[int, str] = field(default_factory=dict)
    cached: int = 0  # rows answered from the result cache


def make_runner(bundle: Bundle, api: ApiDefinition, settings: ServeSettings) -> Runner:
    """The runner an API gets: load-once workers for ``.py``; for ``.sh``, warm runs where the
    pack-time check found them equal to cold runs, else a fresh process per run."""
    if api.kind == "py":
        return LoadOnceRunner(bundle, api, size=settings.workers, timeout=settings.timeout)
    if api.warm and api.warm_script and not settings.cold:
        return WarmScriptRunner(bundle, api, concurrency=settings.workers, timeout=settings.timeout)
    return ScriptRunner(bundle, api, concurrency=settings.workers, timeout=settings.timeout)


class ModelService:
    """Everything the app does with the model, independent of HTTP."""

    # Told of every answered prediction: API, inputs the model was run for, the prediction,
    # seconds taken. The metrics layer sets it.
    on_prediction: Callable[[str, int, Prediction, float], None] | None = None

    def __init__(
        self, bundle: Bundle, settings: ServeSettings, *, cache: ResultCache | None = None
    ) -> None:
        self.bundle = bundle
        self.settings = settings
        self.cache = cache
        self.engines: dict[str, ApiEngine] = {}
        for api in bundle.manifest.apis:
            size = settings.batch_size or DEFAULT_BATCH[api.kind]
            self.engines[api.name] = ApiEngine(
                make_runner(bundle, api, settings),
                batch_size=size,
                batch_wait=settings.batch_wait_ms / 1000,
                probe_input=api.example_input[0] if api.example_input else None,
            )

    @property
    def ready(self) -> bool:
        return all(engine.ready for engine in self.engines.values())

    async def start(self) -> None:
        for engine in self.engines.values():
            await engine.start()

    async def stop(self) -> None:
        for engine in self.engines.values():
            await engine.stop()

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
        """Run inputs through an API; PredictionError when the model itself fails.

        Only inputs missing from the result cache are computed; ``cache_only`` never runs the
        model, and inputs not in the cache get null rows.
        """
        started = time.perf_counter()
        api = self.bundle.apis[api_name]
        cache = self.cache if self.cache is not None and self.cache.enabled else None
        hits = await cache.fetch(api_name, inputs) if cache and (fetch_cache or cache_only) else {}
        todo = [] if cache_only else [value for value in inputs if value not in hits]
        try:
            engine = self.engines[api_name]
            outcomes = await engine.predict(todo, background=background) if todo else []
        except RunTimeout as error:
            logger.error("%s timed out [request id %s]: %s", api_name, REQUEST_ID.get(), error)
            raise PredictionError(504, public_reason(error.detail)) from error
        except RunError as error:
            logger.error(
                "%s failed [request id %s]: %s\n%s",
                api_name,
                REQUEST_ID.get(),
                error.detail,
                error.stderr_tail,
            )
            raise PredictionError(502, public_reason(error.detail, error.stderr_tail)) from error
        errors = {
            i: public_reason(outcome.error, outcome.stderr_tail) if outcome.error else NO_VALUES
            for i, outcome in enumerate(outcomes)
            if outcome.error or outcome.row is None
        }
        failed = [i for i, outcome in enumerate(outcomes) if outcome.error]
        if failed and len(failed) == len(outcomes) and not api.example_input:
            # With no example input to tell a broken model from bad inputs, all failing is
            # a model failure.
            first = next(iter(errors.values()))
            logger.error(
                "%s failed on every input [request id %s]: %s", api_name, REQUEST_ID.get(), first
            )
            raise PredictionError(502, f"{api_name} failed on every input: {first}")
        rows = type_rows([outcome.row for outcome in outcomes], api.columns)
        if cache and save_cache:
            pairs = enumerate(zip(todo, rows))
            fresh = {v: r for i, (v, r) in pairs if r is not None and i not in errors}
            await cache.save(api_name, fresh)
        prediction = Prediction(rows=rows, errors=errors)
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
        row, error = by_input.get(value, (None, "not in the result cache (cache_only)"))
        rows.append(row)
        if error:
            errors[i] = error
    return Prediction(rows=rows, errors=errors, cached=sum(value in hits for value in inputs))
