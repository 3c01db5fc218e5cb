"""Jobs and the result cache in an embedded SQLite file: ``<bundle>/state/state.db``.

WAL mode, so readers never wait for the writer; every change is one short transaction, so a
crash (even ``kill -9``) loses at most the chunks that were being computed. Unfinished chunks
wait in ``job_queue``, each with the holder of its claim (if any) and when it was last renewed.
(The ``holder`` and ``lease_until`` columns of ``jobs`` are left from schema 1 and unused.)
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from ersilia_pack.errors import ServeError
from ersilia_pack.runtime.bundle.manifest import Bundle
from ersilia_pack.runtime.settings import ServeSettings
from ersilia_pack.runtime.state.store import (
    ACTIVE_STATES,
    CANCELLED,
    DONE,
    FINISHED,
    QUEUED,
    RUNNING,
    SAVED,
    STOPPED,
    ChunkClaim,
    ChunkResult,
    JobRecord,
)

SCHEMA_VERSION = 2
_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    api TEXT NOT NULL,
    owner TEXT NOT NULL,
    model_hash TEXT NOT NULL,
    state TEXT NOT NULL,
    total INTEGER NOT NULL,
    chunk_size INTEGER NOT NULL,
    chunks INTEGER NOT NULL,
    options TEXT NOT NULL,
    created REAL NOT NULL,
    updated REAL NOT NULL,
    done INTEGER NOT NULL DEFAULT 0,
    nulls INTEGER NOT NULL DEFAULT 0,
    computed INTEGER NOT NULL DEFAULT 0,
    cached INTEGER NOT NULL DEFAULT 0,
    chunks_processed INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    holder TEXT,
    lease_until REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state, created);
CREATE INDEX IF NOT EXISTS jobs_by_update ON jobs (updated);
CREATE TABLE IF NOT EXISTS job_inputs (
    job_id TEXT NOT NULL,
    chunk INTEGER NOT NULL,
    inputs TEXT NOT NULL,
    PRIMARY KEY (job_id, chunk)
);
CREATE TABLE IF NOT EXISTS job_chunks (
    job_id TEXT NOT NULL,
    chunk INTEGER NOT NULL,
    result TEXT NOT NULL,
    PRIMARY KEY (job_id, chunk)
);
CREATE TABLE IF NOT EXISTS job_queue (
    job_id TEXT NOT NULL,
    chunk INTEGER NOT NULL,
    holder TEXT,
    renewed REAL NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, chunk)
);
CREATE INDEX IF NOT EXISTS job_queue_by_holder ON job_queue (holder, renewed);
CREATE TABLE IF NOT EXISTS cache (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key BLOB NOT NULL UNIQUE,
    row TEXT NOT NULL
);
"""
_JOB_COLUMNS = (
    "id, api, owner, model_hash, state, total, chunk_size, chunks, options, created, updated, "
    "done, nulls, computed, cached, chunks_processed, error"
)
# Schema 1 kept no queue: its unfinished jobs get theirs from the chunks they have not recorded.
_QUEUE_UNRECORDED = """
INSERT OR IGNORE INTO job_queue (job_id, chunk)
SELECT i.job_id, i.chunk FROM job_inputs i JOIN jobs j ON j.id = i.job_id
WHERE j.state IN ('queued', 'running')
AND NOT EXISTS (SELECT 1 FROM job_chunks c WHERE c.job_id = i.job_id AND c.chunk = i.chunk)
"""
# Comfortably under SQLite's limit on the number of ? in one statement.
_KEYS_PER_QUERY = 500


class SqliteStore:
    """The default store: one SQLite file, one connection shared under a lock."""

    # Models may share the file: a job of another model hash may be another model's.
    versions_shared = False

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        try:
            # isolation_level=None: transactions are opened explicitly, never implicitly.
            self._db = sqlite3.connect(
                path, timeout=30, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise ServeError(
                    f"{path} was written by a newer ersilia_pack (schema {version}): "
                    "upgrade ersilia_pack, or move the file away to start afresh"
                )
            # executescript commits on its own; every statement in it is idempotent.
            self._db.executescript(_SCHEMA)
            if version < SCHEMA_VERSION:
                self._db.execute(_QUEUE_UNRECORDED)
            self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.Error as error:
            raise ServeError(f"cannot open the job database {path}: {error}") from error

    @classmethod
    def for_bundle(cls, bundle: Bundle, settings: ServeSettings) -> SqliteStore:
        return cls(bundle.state_dir / "state.db")

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken up front so two writers never deadlock on upgrade."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    @contextlib.contextmanager
    def _reading(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            yield self._db

    # jobs

    def create_job(self, job: JobRecord, chunks: list[list[str]]) -> None:
        with self._transaction() as db:
            db.execute(
                f"INSERT INTO jobs ({_JOB_COLUMNS}) VALUES ({', '.join('?' * 17)})",
                (
                    job.id,
                    job.api,
                    job.owner,
                    job.model_hash,
                    job.state,
                    job.total,
                    job.chunk_size,
                    job.chunks,
                    json.dumps(job.options),
                    job.created,
                    job.updated,
                    job.done,
                    job.nulls,
                    job.computed,
                    job.cached,
                    job.chunks_processed,
                    job.error,
                ),
            )
            db.executemany(
                "INSERT INTO job_inputs (job_id, chunk, inputs) VALUES (?, ?, ?)",
                ((job.id, i, json.dumps(inputs)) for i, inputs in enumerate(chunks)),
            )
            db.executemany(
                "INSERT INTO job_queue (job_id, chunk) VALUES (?, ?)",
                ((job.id, i) for i in range(len(chunks))),
            )

    def count_jobs(self, model_hash: str) -> dict[str, int]:
        with self._reading() as db:
            rows = db.execute(
                "SELECT state, COUNT(*) FROM jobs WHERE model_hash = ? GROUP BY state",
                (model_hash,),
            ).fetchall()
        return {str(state): int(count) for state, count in rows}

    def get_job(self, job_id: str) -> JobRecord | None:
        with self._reading() as db:
            row = db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            return None
        names = [name.strip() for name in _JOB_COLUMNS.split(",")]
        values = dict(zip(names, row))
        values["options"] = json.loads(values["options"])
        return JobRecord(**values)

    def _claim(
        self, db: sqlite3.Connection, rows: list[tuple[str, int]], holder: str
    ) -> list[ChunkClaim]:
        now = time.time()
        db.executemany(
            "UPDATE job_queue SET holder = ?, renewed = ? WHERE job_id = ? AND chunk = ?",
            ((holder, now, job_id, chunk) for job_id, chunk in rows),
        )
        db.executemany(
            "UPDATE jobs SET state = ?, updated = ? WHERE id = ? AND state = ?",
            ((RUNNING, now, job_id, QUEUED) for job_id in {job_id for job_id, _ in rows}),
        )
        return [ChunkClaim(job_id, chunk) for job_id, chunk in rows]

    def claim_chunks(
        self, model_hash: str, holder: str, count: int, *, block: float
    ) -> list[ChunkClaim]:
        # SQLite cannot wait for work: the caller waits (``block`` is for stores that can).
        with self._transaction() as db:
            rows = db.execute(
                "SELECT q.job_id, q.chunk FROM job_queue q JOIN jobs j ON j.id = q.job_id "
                "WHERE q.holder IS NULL AND j.model_hash = ? AND j.state IN (?, ?) "
                "ORDER BY j.created, q.job_id, q.chunk LIMIT ?",
                (model_hash, *ACTIVE_STATES, count),
            ).fetchall()
            return self._claim(db, rows, holder)

    def take_over(
        self,
        model_hash: str,
        holder: str,
        count: int,
        *,
        idle: float,
        is_dead: Callable[[str], bool],
    ) -> list[ChunkClaim]:
        now = time.time()
        with self._transaction() as db:
            holders = db.execute(
                "SELECT DISTINCT holder FROM job_queue WHERE holder IS NOT NULL AND holder != ?",
                (holder,),
            ).fetchall()
            dead = [name for (name,) in holders if is_dead(name)]
            rows = db.execute(
                "SELECT q.job_id, q.chunk FROM job_queue q JOIN jobs j ON j.id = q.job_id "
                "WHERE q.holder IS NOT NULL AND q.holder != ? AND j.model_hash = ? "
                "AND j.state IN (?, ?) "
                f"AND (q.renewed < ? OR q.holder IN ({', '.join('?' * len(dead))})) "
                "ORDER BY j.created, q.job_id, q.chunk LIMIT ?",
                (holder, model_hash, *ACTIVE_STATES, now - idle, *dead, count),
            ).fetchall()
            return self._claim(db, rows, holder)

    def stranded_jobs(
        self, model_hash: str, *, idle: float, is_dead: Callable[[str], bool]
    ) -> list[JobRecord]:
        # Models may share this file (--state-dir) and a job does not say which model made
        # it, so a job of another hash may be another model's: none is judged stranded.
        return []

    def renew(self, claims: list[ChunkClaim], holder: str) -> list[bool]:
        now = time.time()
        with self._transaction() as db:
            return [
                db.execute(
                    "UPDATE job_queue SET renewed = ? "
                    "WHERE job_id = ? AND chunk = ? AND holder = ?",
                    (now, claim.job_id, claim.chunk, holder),
                ).rowcount
                == 1
                for claim in claims
            ]

    def release(self, claims: list[ChunkClaim], holder: str) -> None:
        with self._transaction() as db:
            db.executemany(
                "UPDATE job_queue SET holder = NULL, renewed = 0 "
                "WHERE job_id = ? AND chunk = ? AND holder = ?",
                ((claim.job_id, claim.chunk, holder) for claim in claims),
            )

    def chunk_inputs(self, job_id: str, chunk: int) -> list[str] | None:
        with self._reading() as db:
            row = db.execute(
                "SELECT inputs FROM job_inputs WHERE job_id = ? AND chunk = ?", (job_id, chunk)
            ).fetchone()
        return None if row is None else list(json.loads(row[0]))

    def finished_chunks(self, job_id: str) -> set[int]:
        with self._reading() as db:
            rows = db.execute("SELECT chunk FROM job_chunks WHERE job_id = ?", (job_id,))
            return {chunk for (chunk,) in rows}

    def save_chunk(
        self, claim: ChunkClaim, result: ChunkResult, *, computed: int, cached: int
    ) -> str:
        job_id, chunk = claim.job_id, claim.chunk
        with self._transaction() as db:
            row = db.execute("SELECT state, chunks FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or row[0] not in ACTIVE_STATES:
                return STOPPED
            new = db.execute(
                "INSERT OR IGNORE INTO job_chunks (job_id, chunk, result) VALUES (?, ?, ?)",
                (job_id, chunk, result.dumps()),
            ).rowcount
            db.execute("DELETE FROM job_queue WHERE job_id = ? AND chunk = ?", (job_id, chunk))
            rows, nulls = (len(result.rows), result.nulls) if new else (0, 0)
            db.execute(
                "UPDATE jobs SET done = done + ?, nulls = nulls + ?, computed = computed + ?, "
                "cached = cached + ?, chunks_processed = chunks_processed + 1, updated = ? "
                "WHERE id = ?",
                (rows, nulls, computed, cached, time.time(), job_id),
            )
            (recorded,) = db.execute(
                "SELECT count(*) FROM job_chunks WHERE job_id = ?", (job_id,)
            ).fetchone()
            if recorded < row[1]:
                return SAVED
            db.execute("UPDATE jobs SET state = ? WHERE id = ?", (DONE, job_id))
            return FINISHED

    def read_chunk(self, job_id: str, chunk: int) -> ChunkResult | None:
        with self._reading() as db:
            row = db.execute(
                "SELECT result FROM job_chunks WHERE job_id = ? AND chunk = ?", (job_id, chunk)
            ).fetchone()
        return None if row is None else ChunkResult.loads(row[0])

    def finish(self, job_id: str, state: str, error: str | None = None) -> bool:
        with self._transaction() as db:
            cursor = db.execute(
                "UPDATE jobs SET state = ?, error = ?, updated = ? "
                "WHERE id = ? AND state IN (?, ?)",
                (state, error, time.time(), job_id, *ACTIVE_STATES),
            )
            db.execute("DELETE FROM job_queue WHERE job_id = ?", (job_id,))
            return cursor.rowcount == 1

    def cancel(self, job_id: str) -> str | None:
        with self._transaction() as db:
            row = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return None
            db.execute("DELETE FROM job_inputs WHERE job_id = ?", (job_id,))
            db.execute("DELETE FROM job_chunks WHERE job_id = ?", (job_id,))
            db.execute("DELETE FROM job_queue WHERE job_id = ?", (job_id,))
            if row[0] in ACTIVE_STATES:
                db.execute(
                    "UPDATE jobs SET state = ?, updated = ? WHERE id = ?",
                    (CANCELLED, time.time(), job_id),
                )
                return CANCELLED
            db.execute("DELETE FROM jobs WHERE id = ?", (job_id,))
            return "deleted"

    def purge(self, updated_before: float) -> int:
        with self._transaction() as db:
            ids = [
                (job_id,)
                for (job_id,) in db.execute(
                    "SELECT id FROM jobs WHERE updated < ?", (updated_before,)
                )
            ]
            db.executemany("DELETE FROM job_inputs WHERE job_id = ?", ids)
            db.executemany("DELETE FROM job_chunks WHERE job_id = ?", ids)
            db.executemany("DELETE FROM job_queue WHERE job_id = ?", ids)
            db.executemany("DELETE FROM jobs WHERE id = ?", ids)
            return len(ids)

    # the result cache

    def cache_get(self, keys: list[bytes]) -> dict[bytes, str]:
        found: dict[bytes, str] = {}
        with self._reading() as db:
            for start in range(0, len(keys), _KEYS_PER_QUERY):
                part = keys[start : start + _KEYS_PER_QUERY]
                query = f"SELECT key, row FROM cache WHERE key IN ({', '.join('?' * len(part))})"
                found.update(db.execute(query, part).fetchall())
        return found

    def cache_put(self, items: dict[bytes, str], size: int) -> None:
        if not items:
            return
        with self._transaction() as db:
            db.executemany("INSERT OR REPLACE INTO cache (key, row) VALUES (?, ?)", items.items())
            # seq only grows, so everything at or below max(seq) - size is older than the
            # newest `size` rows.
            db.execute("DELETE FROM cache WHERE seq <= (SELECT max(seq) FROM cache) - ?", (size,))

    def close(self) -> None:
        with self._lock:
            self._db.close()
