"""`ersilia_pack run --dask ADDRESS`: the chunks of a batch run computed on a Dask cluster.

The bundle sits on storage every worker reads at the same path. A worker plugin keeps one
engine per Dask worker (the engine the server uses, loaded on the worker's first chunk and
stopped with the worker); each task computes one chunk of inputs on it and returns its rows.
The client keeps a window of chunks submitted, takes each result as soon as it is done (so a
worker that dies loses only the chunks it was computing, which the scheduler runs again
elsewhere), and hands the rows on in input order, each chunk once, to the batch run that
records them. This module, and with it ``distributed``, is imported only when ``--dask`` is
given (``pip install 'ersilia-pack[dask]'``).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import threading
import uuid
from collections.abc import Callable
from concurrent.futures import Future as ThreadFuture
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distributed import Client, WorkerPlugin, as_completed, get_worker
from distributed.scheduler import KilledWorker

from ersilia_pack.errors import ErsiliaPackError

logger = logging.getLogger("ersilia_pack.batch")

# Chunks submitted at once, per thread of the cluster's workers: enough that a worker never
# waits for the client, few enough that a stop (Ctrl-C) finishes soon.
WINDOW_PER_THREAD = 2
CONNECT_SECONDS = 30


class DaskError(ErsiliaPackError):
    """The Dask cluster cannot be used: the scheduler is out of reach, a chunk failed there,
    or the scheduler gave up on one whose workers kept dying."""

    exit_code = 4


@dataclass
class ChunkRows:
    """A computed chunk: one row per input (None where the model gave none), or its failure."""

    rows: list[list[Any] | None] = field(default_factory=list)
    failed: int = 0
    error: tuple[int, str] | None = None  # (HTTP status, detail) of a chunk the model failed


class _Engine:
    """The bundle's engine in a thread of its own with its own event loop, for one worker."""

    def __init__(self, bundle_dir: str, workers: int | None) -> None:
        from ersilia_pack.runtime.bundle.manifest import load_bundle
        from ersilia_pack.runtime.engine.service import ModelService
        from ersilia_pack.runtime.settings import ServeSettings

        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="ersilia-pack-engine", daemon=True
        )
        self.thread.start()
        bundle = load_bundle(Path(bundle_dir))
        self.service = ModelService(bundle, ServeSettings.from_env(workers=workers))
        self._call(self.service.start())

    def _call(self, coroutine: Any) -> Any:
        future: ThreadFuture[Any] = asyncio.run_coroutine_threadsafe(coroutine, self.loop)
        return future.result()

    def predict(self, api: str, inputs: list[str]) -> ChunkRows:
        from ersilia_pack.runtime.engine.service import PredictionError

        try:
            prediction = self._call(self.service.predict(api, inputs))
        except PredictionError as error:
            return ChunkRows(error=(error.status_code, error.detail))
        rows = [None if i in prediction.errors else row for i, row in enumerate(prediction.rows)]
        return ChunkRows(rows=rows, failed=len(prediction.errors))

    def stop(self) -> None:
        try:
            self._call(self.service.stop())
        finally:
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(timeout=30)
            self.loop.close()


class EnginePlugin(WorkerPlugin):
    """A Dask worker plugin: the bundle's engine, loaded once per worker on its first chunk
    (loading in ``setup`` would hold up the worker's event loop, and its heartbeats, for as
    long as the model takes to load) and stopped, model processes and all, at teardown.
    Registered again (a rerun on the same cluster), it keeps the engines already loaded."""

    idempotent = True

    def __init__(self, bundle_dir: str, workers: int | None) -> None:
        self.bundle_dir = bundle_dir
        self.workers = workers
        self._engine: _Engine | None = None
        self._lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        return {"bundle_dir": self.bundle_dir, "workers": self.workers}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.bundle_dir = state["bundle_dir"]
        self.workers = state["workers"]
        self._engine = None
        self._lock = threading.Lock()

    def setup(self, worker: Any) -> None:
        """Nothing to do until the first chunk."""

    def teardown(self, worker: Any) -> None:
        with self._lock:
            engine, self._engine = self._engine, None
        if engine is not None:
            engine.stop()

    def engine(self) -> _Engine:
        with self._lock:
            if self._engine is None:
                self._engine = _Engine(self.bundle_dir, self.workers)
            return self._engine


def plugin_name(bundle_dir: Path, model_hash: str, workers: int | None) -> str:
    """One plugin (and engine) per bundle and worker count on a cluster: a rerun reuses it."""
    text = f"{bundle_dir.resolve()}:{model_hash}:{workers}"
    return "ersilia-pack-" + hashlib.sha256(text.encode()).hexdigest()[:16]


def _compute_chunk(name: str, api: str, inputs: list[str]) -> ChunkRows:
    """A task: one chunk on this worker's engine."""
    plugin = get_worker().plugins[name]
    assert isinstance(plugin, EnginePlugin)
    return plugin.engine().predict(api, inputs)


def compute_on_dask(
    *,
    address: str,
    bundle_dir: Path,
    model_hash: str,
    api: str,
    chunks: list[list[str]],
    first: int,
    workers: int | None,
    record: Callable[[int, ChunkRows], None],
    stop: Callable[[], bool],
) -> None:
    """Compute ``chunks[first:]`` on the cluster at ``address``; ``record(index, rows)`` for each,
    in order, each once. Once ``stop()`` says yes no chunk is submitted; those submitted are
    recorded, then this returns."""
    try:
        client = Client(address, timeout=CONNECT_SECONDS, set_as_default=False)
    except (OSError, TimeoutError) as error:
        raise DaskError(f"cannot reach the Dask scheduler at {address}: {error}") from error
    name = plugin_name(bundle_dir, model_hash, workers)
    try:
        client.register_plugin(EnginePlugin(str(bundle_dir.resolve()), workers), name=name)
        threads = sum(client.nthreads().values()) or 1
        window = max(2, WINDOW_PER_THREAD * threads)
        logger.info(
            "computing %d chunks on %d Dask workers (%d threads) at %s",
            len(chunks) - first,
            len(client.nthreads()),
            threads,
            address,
        )
        tag = f"ersilia-pack-{api}-{uuid.uuid4().hex[:12]}"  # this run's task keys
        index_of: dict[Any, int] = {}
        done: dict[int, ChunkRows] = {}
        submitted = recorded = first

        def submit_more() -> list[Any]:
            nonlocal submitted
            more = []
            while submitted < len(chunks) and submitted - recorded < window and not stop():
                future = client.submit(
                    _compute_chunk, name, api, chunks[submitted], key=f"{tag}-{submitted}"
                )
                index_of[future.key] = submitted
                more.append(future)
                submitted += 1
            return more

        futures = as_completed(submit_more(), loop=client.loop)
        while recorded < submitted:
            future = next(futures)
            # Taken at once, so a worker that dies later loses nothing computed.
            done[index_of.pop(future.key)] = _result(future)
            future.release()
            while recorded in done:
                record(recorded, done.pop(recorded))
                recorded += 1
            futures.update(submit_more())
    finally:
        client.close()


def _result(future: Any) -> ChunkRows:
    try:
        result: ChunkRows = future.result()
        return result
    except KilledWorker as error:
        raise DaskError(
            f"Dask gave up on a chunk: the workers computing it died ({error}); "
            "the rows recorded so far are kept for a rerun"
        ) from error
    except Exception as error:  # whatever the task raised on the worker, sent back here
        raise DaskError(f"a chunk failed on the Dask cluster: {error!r}") from error
