"""Where jobs and the result cache are kept: one interface, one module per implementation.

SQLite (``sqlite_store.py``, a file in the bundle's state folder) is the default: it survives
restarts and needs no server. Redis (``redis_store.py``) is picked when a Redis URL is set, so
several replicas of one model share jobs, the chunks of each job, and the cache. Both are
synchronous; the async callers run them with ``asyncio.to_thread``.
"""

from __future__ import annotations

import importlib
import json
import re
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any, Protocol

from ersilia_pack.runtime.bundle.manifest import Bundle
from ersilia_pack.runtime.settings import ServeSettings

STORES: dict[str, str] = {
    "sqlite": "ersilia_pack.runtime.state.sqlite_store:SqliteStore",
    "redis": "ersilia_pack.runtime.state.redis_store:RedisStore",
}

# The shape of the job ids this server makes. An id of any other shape names no job, and the
# job manager never passes it to a store: in Redis, ``<id>:inputs`` names another key.
_JOB_ID = re.compile(r"[0-9a-f]{32}")


def new_job_id() -> str:
    """A fresh job id: 32 lower-case hexadecimal digits."""
    return uuid.uuid4().hex


def is_job_id(text: str) -> bool:
    """Whether ``text`` has the shape of the ids :func:`new_job_id` makes."""
    return _JOB_ID.fullmatch(text) is not None


QUEUED, RUNNING, DONE, FAILED, CANCELLED = "queued", "running", "done", "failed", "cancelled"
ACTIVE_STATES = (QUEUED, RUNNING)
FINAL_STATES = (DONE, FAILED, CANCELLED)


@dataclass
class JobRecord:
    """One job: what to run, how far it got, and what it cost."""

    id: str
    api: str
    owner: str
    model_hash: str
    state: str
    total: int
    chunk_size: int
    chunks: int
    options: dict[str, bool]
    created: float
    updated: float
    done: int = 0
    nulls: int = 0
    computed: int = 0
    cached: int = 0
    chunks_processed: int = 0
    error: str | None = None

    def to_fields(self) -> dict[str, str]:
        """The record as flat strings (a Redis hash)."""
        values = asdict(self)
        values["options"] = json.dumps(self.options)
        values["error"] = self.error or ""
        return {key: str(value) for key, value in values.items()}

    @classmethod
    def from_fields(cls, fields: dict[str, str]) -> JobRecord:
        """The record back from flat strings."""
        ints = ("total", "chunk_size", "chunks", "done", "nulls", "computed", "cached")
        return cls(
            id=fields["id"],
            api=fields["api"],
            owner=fields["owner"],
            model_hash=fields["model_hash"],
            state=fields["state"],
            options=json.loads(fields["options"]),
            created=float(fields["created"]),
            updated=float(fields["updated"]),
            error=fields.get("error") or None,
            chunks_processed=int(fields.get("chunks_processed", 0)),
            **{name: int(fields[name]) for name in ints},
        )


@dataclass
class ChunkResult:
    """The typed rows of one finished chunk, and why any null row is null (by row in chunk)."""

    rows: list[list[Any] | None]
    errors: dict[int, str] = field(default_factory=dict)

    @property
    def nulls(self) -> int:
        """Rows with no value: inputs the model could not handle, or not in the cache."""
        return sum(row is None for row in self.rows)

    def dumps(self) -> str:
        return json.dumps(
            {"rows": self.rows, "errors": {str(i): e for i, e in self.errors.items()}},
            separators=(",", ":"),
            allow_nan=False,
        )

    @classmethod
    def loads(cls, text: str | bytes) -> ChunkResult:
        payload = json.loads(text)
        return cls(payload["rows"], {int(i): e for i, e in payload["errors"].items()})


@dataclass(frozen=True)
class ChunkClaim:
    """One chunk of a job, claimed by one replica; ``ticket`` is the store's own handle on it."""

    job_id: str
    chunk: int
    ticket: str = ""


SAVED, FINISHED, STOPPED = "saved", "finished", "stopped"


class Store(Protocol):
    """Jobs, the claims replicas hold on their chunks, and the result cache.

    ``versions_shared``: every job kept is of one model id, so a job of another model hash
    is another version's (it may be shown, and failed once that version is no longer served).

    A job's chunks are queued when it is kept. A replica claims chunks one at a time while it
    has a free lane, renews its claims while it computes them and records each result once;
    a claim not renewed in time, or held by a process known to be dead, is taken over.
    """

    versions_shared: bool

    def create_job(self, job: JobRecord, chunks: list[list[str]]) -> None:
        """Keep a new job and its inputs, split in chunks, and queue every chunk."""

    def get_job(self, job_id: str) -> JobRecord | None: ...

    def count_jobs(self, model_hash: str) -> dict[str, int]:
        """How many jobs of the model are in each state (every replica's)."""
        ...

    def claim_chunks(
        self, model_hash: str, holder: str, count: int, *, block: float
    ) -> list[ChunkClaim]:
        """Claim up to ``count`` queued chunks of this model's unfinished jobs, oldest first,
        and mark their jobs running. A store that can wait for work (Redis) waits up to
        ``block`` seconds when there is none; the others answer at once."""

    def take_over(
        self,
        model_hash: str,
        holder: str,
        count: int,
        *,
        idle: float,
        is_dead: Callable[[str], bool],
    ) -> list[ChunkClaim]:
        """Claim up to ``count`` chunks of other holders: those of a holder ``is_dead`` says is
        gone, and those whose claim was not renewed for ``idle`` seconds."""

    def stranded_jobs(
        self, model_hash: str, *, idle: float, is_dead: Callable[[str], bool]
    ) -> list[JobRecord]:
        """Unfinished jobs that another version of the model (another model hash) made and no
        live server serves any more: none of its replicas read its queue or renewed a claim
        for ``idle`` seconds (``is_dead`` ones do not count) and none of its jobs changed."""
        ...

    def renew(self, claims: list[ChunkClaim], holder: str) -> list[bool]:
        """Keep claims alive; False for a claim ``holder`` lost (taken over, or its job is no
        longer running, in which case the claim is dropped)."""

    def release(self, claims: list[ChunkClaim], holder: str) -> None:
        """Give claims up so that any replica takes them at once."""

    def chunk_inputs(self, job_id: str, chunk: int) -> list[str] | None: ...

    def finished_chunks(self, job_id: str) -> set[int]: ...

    def save_chunk(
        self, claim: ChunkClaim, result: ChunkResult, *, computed: int, cached: int
    ) -> str:
        """Record a chunk's result once (a second save of it changes no rows) and end its claim.

        ``saved``; ``finished`` when it was the job's last chunk (the job is now done); or
        ``stopped`` when the job is no longer running (cancelled, failed, removed).
        """

    def read_chunk(self, job_id: str, chunk: int) -> ChunkResult | None: ...

    def finish(self, job_id: str, state: str, error: str | None = None) -> bool:
        """Move an unfinished job to ``failed`` (or ``done``) and drop its queued chunks."""

    def cancel(self, job_id: str) -> str | None:
        """Cancel an unfinished job (its inputs, rows and queued chunks are removed, its record
        stays as ``cancelled``) or remove a finished one; the new state, ``deleted``, or None."""

    def purge(self, updated_before: float) -> int:
        """Remove jobs not updated since ``updated_before``; how many."""

    def cache_get(self, keys: list[bytes]) -> dict[bytes, str]:
        """Cached rows (JSON) by key, for the keys that are cached."""

    def cache_put(self, items: dict[bytes, str], size: int) -> None:
        """Cache rows by key, then keep only the newest ``size`` of them."""

    def close(self) -> None: ...


def open_store(bundle: Bundle, settings: ServeSettings) -> Store:
    """The store a served bundle uses: Redis when a URL is set, else SQLite in its state folder."""
    name = "redis" if settings.redis_url else "sqlite"
    module_name, _, class_name = STORES[name].partition(":")
    store_class = getattr(importlib.import_module(module_name), class_name)
    store: Store = store_class.for_bundle(bundle, settings)
    return store
