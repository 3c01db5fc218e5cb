"""Jobs and the result cache in Redis, shared by every replica of one model.

Keys live under ``ersilia_pack:<model id>:``. A job is a hash plus a hash of input chunks and a
hash of finished chunks. Its chunks wait in a stream per model hash (``queue:<model hash>``)
read by one consumer group: each replica is a consumer that claims chunks with ``XREADGROUP``
while it has a free lane, keeps its claims alive with ``XCLAIM ... JUSTID`` while it computes,
and ends each with ``XACK`` when the chunk's result is recorded. A claim that is not renewed
(its replica died elsewhere) is taken over with ``XAUTOCLAIM``; one held by a dead process of
this host is taken with ``XCLAIM`` at once. Recording a result, finishing and cancelling are
each one Lua script, and a chunk's rows are written with ``HSETNX``: recorded once.
The ``redis`` package is imported only here, only when a Redis URL is set.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ersilia_pack.errors import ServeError
from ersilia_pack.runtime.bundle.manifest import Bundle
from ersilia_pack.runtime.settings import ServeSettings
from ersilia_pack.runtime.state.store import (
    ACTIVE_STATES,
    CANCELLED,
    ChunkClaim,
    ChunkResult,
    JobRecord,
)

GROUP = "replicas"
_KEYS_PER_CALL = 500
_FIELDS_PER_CALL = 100
# Released claims look idle for ten years, so the next XAUTOCLAIM of any replica takes them.
_RELEASED_IDLE_MS = 10 * 365 * 24 * 3600 * 1000
# Consumers with nothing pending and silent this long are dropped from the group.
_STALE_CONSUMER_MS = 3600 * 1000

_ENQUEUE = """
for i = 0, tonumber(ARGV[2]) - 1 do
  local id = redis.call('XADD', KEYS[1], '*', 'job', ARGV[1], 'chunk', i)
  redis.call('HSET', KEYS[2], i, id)
end
redis.call('EXPIRE', KEYS[2], ARGV[3])
return 0
"""
# Claimed entries of jobs that stopped are acknowledged and dropped; the rest mark their job
# running. KEYS: the stream, then each entry's job; ARGV: group, now, then the entry ids.
_START = """
local kept = {}
for i = 2, #KEYS do
  local id = ARGV[i + 1]
  local state = redis.call('HGET', KEYS[i], 'state')
  if state == 'queued' then
    redis.call('HSET', KEYS[i], 'state', 'running', 'updated', ARGV[2])
  end
  if state == 'queued' or state == 'running' then
    kept[#kept + 1] = id
  else
    redis.call('XACK', KEYS[1], ARGV[1], id)
    redis.call('XDEL', KEYS[1], id)
  end
end
return kept
"""
# KEYS: the stream, then each claim's job; ARGV: group, consumer, idle to set, then entry ids.
_RENEW = """
local kept = {}
for i = 2, #KEYS do
  local id = ARGV[i + 2]
  local state = redis.call('HGET', KEYS[i], 'state')
  local ok = 0
  if state == 'queued' or state == 'running' then
    local pending = redis.call('XPENDING', KEYS[1], ARGV[1], id, id, 1)
    if #pending == 1 and pending[1][2] == ARGV[2] then
      redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, id, 'IDLE', ARGV[3], 'JUSTID')
      ok = 1
    end
  else
    redis.call('XACK', KEYS[1], ARGV[1], id)
    redis.call('XDEL', KEYS[1], id)
  end
  kept[#kept + 1] = ok
end
return kept
"""
_DROP_CONSUMER = """
if #redis.call('XPENDING', KEYS[1], ARGV[1], '-', '+', 1, ARGV[2]) > 0 then return 0 end
redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], ARGV[2])
return 1
"""
_SAVE_CHUNK = """
local state = redis.call('HGET', KEYS[1], 'state')
if ARGV[11] ~= '' then
  redis.call('XACK', KEYS[6], ARGV[10], ARGV[11])
  redis.call('XDEL', KEYS[6], ARGV[11])
end
if state ~= 'queued' and state ~= 'running' then return 'stopped' end
if redis.call('HSETNX', KEYS[2], ARGV[2], ARGV[3]) == 1 then
  redis.call('HINCRBY', KEYS[1], 'done', ARGV[4])
  redis.call('HINCRBY', KEYS[1], 'nulls', ARGV[5])
end
redis.call('HINCRBY', KEYS[1], 'computed', ARGV[6])
redis.call('HINCRBY', KEYS[1], 'cached', ARGV[7])
redis.call('HINCRBY', KEYS[1], 'chunks_processed', 1)
redis.call('HSET', KEYS[1], 'updated', ARGV[8])
redis.call('HDEL', KEYS[5], ARGV[2])
redis.call('ZADD', KEYS[3], ARGV[8], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[9])
redis.call('EXPIRE', KEYS[2], ARGV[9])
redis.call('EXPIRE', KEYS[4], ARGV[9])
if redis.call('HLEN', KEYS[2]) < tonumber(redis.call('HGET', KEYS[1], 'chunks')) then
  return 'saved'
end
redis.call('HSET', KEYS[1], 'state', 'done')
redis.call('DEL', KEYS[5])
return 'finished'
"""
_FINISH = """
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'queued' and state ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'error', ARGV[3], 'updated', ARGV[4])
for _, id in ipairs(redis.call('HVALS', KEYS[5])) do redis.call('XDEL', KEYS[6], id) end
redis.call('DEL', KEYS[5])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('EXPIRE', KEYS[3], ARGV[5])
redis.call('EXPIRE', KEYS[4], ARGV[5])
return 1
"""
_CANCEL = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return false end
for _, id in ipairs(redis.call('HVALS', KEYS[4])) do redis.call('XDEL', KEYS[6], id) end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
if state == 'queued' or state == 'running' then
  redis.call('HSET', KEYS[1], 'state', 'cancelled', 'updated', ARGV[2])
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  redis.call('ZADD', KEYS[5], ARGV[2], ARGV[1])
  return 'cancelled'
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[5], ARGV[1])
return 'deleted'
"""
_CACHE_PUT = """
local size = tonumber(ARGV[1])
local count = (#ARGV - 1) / 2
local seq = redis.call('INCRBY', KEYS[3], count) - count
for i = 2, #ARGV, 2 do
  seq = seq + 1
  redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  redis.call('ZADD', KEYS[2], seq, ARGV[i])
end
local excess = redis.call('ZCARD', KEYS[2]) - size
while excess > 0 do
  local batch = math.min(excess, 1000)
  local oldest = redis.call('ZPOPMIN', KEYS[2], batch)
  for j = 1, #oldest, 2 do redis.call('HDEL', KEYS[1], oldest[j]) end
  excess = excess - batch
end
return 0
"""


def redact(url: str) -> str:
    """A Redis URL fit for messages: the password replaced by ``***``."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisStore:
    """Jobs and cache of one model in Redis; every replica of the model uses the same keys."""

    # Its jobs are all of one model id: a job of another model hash is another version's.
    versions_shared = True

    def __init__(self, url: str, *, namespace: str, ttl_seconds: float) -> None:
        try:
            import redis
        except ImportError as error:
            raise ServeError(
                "a Redis URL is set but the redis package is not installed: "
                "pip install 'ersilia-pack[redis]'"
            ) from error
        self._url = redact(url)
        self._prefix = f"ersilia_pack:{namespace}"
        self._ttl = max(1, int(ttl_seconds))
        self._response_error = redis.ResponseError
        try:
            # The socket timeout outlasts any blocking read of claim_chunks.
            self._redis: Any = redis.Redis.from_url(
                url, socket_timeout=30, socket_connect_timeout=10
            )
            self._redis.ping()
        except (redis.RedisError, ValueError) as error:
            raise ServeError(f"cannot use Redis at {self._url}: {error}") from error
        self._grouped: set[str] = set()
        self._enqueue = self._redis.register_script(_ENQUEUE)
        self._start = self._redis.register_script(_START)
        self._renew = self._redis.register_script(_RENEW)
        self._drop_consumer = self._redis.register_script(_DROP_CONSUMER)
        self._save_chunk = self._redis.register_script(_SAVE_CHUNK)
        self._finish = self._redis.register_script(_FINISH)
        self._cancel = self._redis.register_script(_CANCEL)
        self._cache_put = self._redis.register_script(_CACHE_PUT)

    @classmethod
    def for_bundle(cls, bundle: Bundle, settings: ServeSettings) -> RedisStore:
        assert settings.redis_url is not None
        return cls(
            settings.redis_url,
            namespace=bundle.manifest.model_id,
            ttl_seconds=settings.job_ttl_hours * 3600,
        )

    def _job(self, job_id: str, part: str = "") -> str:
        return f"{self._prefix}:job:{job_id}{':' + part if part else ''}"

    @property
    def _jobs(self) -> str:
        return f"{self._prefix}:jobs"

    def _queue(self, model_hash: str) -> str:
        return f"{self._prefix}:queue:{model_hash}"

    def _ensure_group(self, stream: str, *, again: bool = False) -> None:
        if stream in self._grouped and not again:
            return
        try:
            # From the stream's start: chunks queued before the group existed are claimed too.
            self._redis.xgroup_create(stream, GROUP, id="0", mkstream=True)
        except self._response_error as error:
            if "BUSYGROUP" not in str(error):
                raise
        self._grouped.add(stream)

    def _grouped_call(self, stream: str, call: Callable[[], Any]) -> Any:
        """``call`` on the stream's group, made again if the stream was removed meanwhile."""
        self._ensure_group(stream)
        try:
            return call()
        except self._response_error as error:
            if "NOGROUP" not in str(error):
                raise
            self._ensure_group(stream, again=True)
            return call()

    @staticmethod
    def _split(ticket: str) -> tuple[str, str]:
        model_hash, _, entry = ticket.rpartition("/")
        return model_hash, entry

    def _started(self, model_hash: str, entries: list[Any]) -> list[ChunkClaim]:
        """Claims of the entries whose job still runs (the others are dropped)."""
        found: dict[str, tuple[str, int]] = {}
        for entry_id, fields in entries:
            if not fields:  # deleted while pending
                continue
            values = {_text(k): _text(v) for k, v in fields.items()}
            found[_text(entry_id)] = (values["job"], int(values["chunk"]))
        if not found:
            return []
        stream = self._queue(model_hash)
        ids = list(found)
        keys = [stream, *(self._job(found[entry_id][0]) for entry_id in ids)]
        kept = self._start(keys=keys, args=[GROUP, time.time(), *ids])
        return [
            ChunkClaim(*found[entry_id], ticket=f"{model_hash}/{entry_id}")
            for entry_id in map(_text, kept)
        ]

    # jobs

    def create_job(self, job: JobRecord, chunks: list[list[str]]) -> None:
        pipe = self._redis.pipeline(transaction=True)
        pipe.hset(self._job(job.id), mapping=job.to_fields())
        inputs = {str(i): json.dumps(values) for i, values in enumerate(chunks)}
        names = list(inputs)
        for start in range(0, len(names), _FIELDS_PER_CALL):
            part = {name: inputs[name] for name in names[start : start + _FIELDS_PER_CALL]}
            pipe.hset(self._job(job.id, "inputs"), mapping=part)
        for key in (self._job(job.id), self._job(job.id, "inputs")):
            pipe.expire(key, self._ttl)
        pipe.zadd(self._jobs, {job.id: job.updated})
        self._enqueue(
            keys=[self._queue(job.model_hash), self._job(job.id, "entries")],
            args=[job.id, len(chunks), self._ttl],
            client=pipe,
        )
        pipe.execute()

    def get_job(self, job_id: str) -> JobRecord | None:
        fields = self._redis.hgetall(self._job(job_id))
        if not fields:
            return None
        return JobRecord.from_fields({_text(k): _text(v) for k, v in fields.items()})

    def count_jobs(self, model_hash: str) -> dict[str, int]:
        ids = [_text(job_id) for job_id in self._redis.zrange(self._jobs, 0, -1)]
        pipe = self._redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(self._job(job_id), "model_hash", "state")
        counts: dict[str, int] = {}
        for fields in pipe.execute() if ids else []:
            owner, state = (_text(value) if value is not None else None for value in fields)
            if owner == model_hash and state:
                counts[state] = counts.get(state, 0) + 1
        return counts

    def claim_chunks(
        self, model_hash: str, holder: str, count: int, *, block: float
    ) -> list[ChunkClaim]:
        stream = self._queue(model_hash)
        wait = int(block * 1000) or None  # None reads without waiting; 0 would wait forever
        reply = self._grouped_call(
            stream,
            lambda: self._redis.xreadgroup(GROUP, holder, {stream: ">"}, count=count, block=wait),
        )
        entries = [entry for _, stream_entries in reply or [] for entry in stream_entries]
        return self._started(model_hash, entries)

    def take_over(
        self,
        model_hash: str,
        holder: str,
        count: int,
        *,
        idle: float,
        is_dead: Callable[[str], bool],
    ) -> list[ChunkClaim]:
        stream = self._queue(model_hash)
        consumers = self._grouped_call(stream, lambda: self._redis.xinfo_consumers(stream, GROUP))
        entries: list[Any] = []
        for consumer in consumers:
            name, pending = _text(consumer["name"]), int(consumer["pending"])
            if name == holder:
                continue
            dead = is_dead(name)
            if dead and pending and len(entries) < count:
                taken = self._redis.xpending_range(
                    stream, GROUP, "-", "+", count - len(entries), consumername=name
                )
                ids = [item["message_id"] for item in taken]
                if ids:
                    entries.extend(self._redis.xclaim(stream, GROUP, holder, 0, ids))
            if dead or int(consumer["idle"]) > _STALE_CONSUMER_MS:
                self._drop_consumer(keys=[stream], args=[GROUP, name])
        cursor: Any = "0-0"
        while len(entries) < count:
            cursor, found, *_ = self._redis.xautoclaim(
                stream, GROUP, holder, int(idle * 1000), cursor, count=count - len(entries)
            )
            entries.extend(found)
            if _text(cursor) == "0-0":
                break
        return self._started(model_hash, entries)

    def stranded_jobs(
        self, model_hash: str, *, idle: float, is_dead: Callable[[str], bool]
    ) -> list[JobRecord]:
        # Every job here is of this model (the keys are under its id): a job of another hash
        # was made by another version of it, whose replicas read that hash's stream.
        ids = [_text(job_id) for job_id in self._redis.zrange(self._jobs, 0, -1)]
        pipe = self._redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(self._job(job_id), "model_hash", "state", "updated")
        by_hash: dict[str, list[str]] = {}
        recent: set[str] = set()
        now = time.time()
        for job_id, fields in zip(ids, pipe.execute() if ids else []):
            owner, state, updated = (_text(v) if v is not None else "" for v in fields)
            if not owner or owner == model_hash or state not in ACTIVE_STATES:
                continue
            by_hash.setdefault(owner, []).append(job_id)
            if updated and now - float(updated) < idle:
                recent.add(owner)
        stranded: list[JobRecord] = []
        for owner, job_ids in by_hash.items():
            if owner in recent or self._served(owner, idle=idle, is_dead=is_dead):
                continue
            stranded.extend(job for job in map(self.get_job, job_ids) if job is not None)
        return stranded

    def _served(self, model_hash: str, *, idle: float, is_dead: Callable[[str], bool]) -> bool:
        """Whether a live replica reads this hash's stream: one that read it, or renewed a
        claim on it, within ``idle`` seconds, and is not a dead process of this host."""
        stream = self._queue(model_hash)
        if not self._redis.exists(stream):
            return False
        try:
            consumers = self._redis.xinfo_consumers(stream, GROUP)
            pending = self._redis.xpending_range(stream, GROUP, "-", "+", _KEYS_PER_CALL)
        except self._response_error as error:
            if "NOGROUP" in str(error):
                return False
            raise
        limit = idle * 1000
        seen = [(_text(c["name"]), int(c["idle"])) for c in consumers]
        seen += [(_text(p["consumer"]), int(p["time_since_delivered"])) for p in pending]
        return any(ms < limit and not is_dead(name) for name, ms in seen)

    def _reclaim(self, claims: list[ChunkClaim], holder: str, idle_ms: int) -> list[bool]:
        by_hash: dict[str, list[tuple[int, ChunkClaim]]] = {}
        for i, claim in enumerate(claims):
            by_hash.setdefault(self._split(claim.ticket)[0], []).append((i, claim))
        kept = [False] * len(claims)
        for model_hash, items in by_hash.items():
            stream = self._queue(model_hash)
            keys = [stream, *(self._job(claim.job_id) for _, claim in items)]
            ids = [self._split(claim.ticket)[1] for _, claim in items]
            replies = self._renew(keys=keys, args=[GROUP, holder, idle_ms, *ids])
            for (i, _), ok in zip(items, replies):
                kept[i] = bool(ok)
        return kept

    def renew(self, claims: list[ChunkClaim], holder: str) -> list[bool]:
        return self._reclaim(claims, holder, 0)

    def release(self, claims: list[ChunkClaim], holder: str) -> None:
        self._reclaim(claims, holder, _RELEASED_IDLE_MS)

    def chunk_inputs(self, job_id: str, chunk: int) -> list[str] | None:
        value = self._redis.hget(self._job(job_id, "inputs"), str(chunk))
        return None if value is None else list(json.loads(value))

    def finished_chunks(self, job_id: str) -> set[int]:
        return {int(_text(name)) for name in self._redis.hkeys(self._job(job_id, "chunks"))}

    def save_chunk(
        self, claim: ChunkClaim, result: ChunkResult, *, computed: int, cached: int
    ) -> str:
        job_id = claim.job_id
        model_hash, entry = self._split(claim.ticket)
        keys = [
            self._job(job_id),
            self._job(job_id, "chunks"),
            self._jobs,
            self._job(job_id, "inputs"),
            self._job(job_id, "entries"),
            self._queue(model_hash),
        ]
        args: list[Any] = [
            job_id,
            claim.chunk,
            result.dumps(),
            len(result.rows),
            result.nulls,
            computed,
            cached,
            time.time(),
            self._ttl,
            GROUP,
            entry,
        ]
        return _text(self._save_chunk(keys=keys, args=args))

    def read_chunk(self, job_id: str, chunk: int) -> ChunkResult | None:
        value = self._redis.hget(self._job(job_id, "chunks"), str(chunk))
        return None if value is None else ChunkResult.loads(value)

    def _model_hash(self, job_id: str) -> str | None:
        value = self._redis.hget(self._job(job_id), "model_hash")
        return None if value is None else _text(value)

    def finish(self, job_id: str, state: str, error: str | None = None) -> bool:
        model_hash = self._model_hash(job_id)
        if model_hash is None:
            return False
        keys = [
            self._job(job_id),
            self._jobs,
            self._job(job_id, "chunks"),
            self._job(job_id, "inputs"),
            self._job(job_id, "entries"),
            self._queue(model_hash),
        ]
        args: list[Any] = [job_id, state, error or "", time.time(), self._ttl]
        return bool(self._finish(keys=keys, args=args))

    def cancel(self, job_id: str) -> str | None:
        model_hash = self._model_hash(job_id)
        if model_hash is None:
            return None
        keys = [
            self._job(job_id),
            self._job(job_id, "inputs"),
            self._job(job_id, "chunks"),
            self._job(job_id, "entries"),
            self._jobs,
            self._queue(model_hash),
        ]
        outcome = self._cancel(keys=keys, args=[job_id, time.time(), self._ttl])
        if outcome is None:
            return None
        state = _text(outcome)
        assert state in (CANCELLED, "deleted")
        return state

    def purge(self, updated_before: float) -> int:
        ids = [
            _text(job_id)
            for job_id in self._redis.zrangebyscore(self._jobs, "-inf", updated_before)
        ]
        if not ids:
            return 0
        pipe = self._redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hget(self._job(job_id), "model_hash")
            pipe.hvals(self._job(job_id, "entries"))
        replies = pipe.execute()
        pipe = self._redis.pipeline(transaction=False)
        for i, job_id in enumerate(ids):
            model_hash, entries = replies[2 * i], replies[2 * i + 1]
            if model_hash is not None and entries:
                pipe.xdel(self._queue(_text(model_hash)), *entries)
            parts = ("", "inputs", "chunks", "entries")
            pipe.delete(*(self._job(job_id, part) for part in parts))
        pipe.zrem(self._jobs, *ids)
        pipe.execute()
        return len(ids)

    # the result cache

    def cache_get(self, keys: list[bytes]) -> dict[bytes, str]:
        found: dict[bytes, str] = {}
        for start in range(0, len(keys), _KEYS_PER_CALL):
            part = keys[start : start + _KEYS_PER_CALL]
            for key, value in zip(part, self._redis.hmget(f"{self._prefix}:cache", part)):
                if value is not None:
                    found[key] = _text(value)
        return found

    def cache_put(self, items: dict[bytes, str], size: int) -> None:
        keys = [f"{self._prefix}:cache", f"{self._prefix}:cache:order", f"{self._prefix}:cache:seq"]
        pairs = list(items.items())
        for start in range(0, len(pairs), _KEYS_PER_CALL):
            args: list[Any] = [size]
            for key, row in pairs[start : start + _KEYS_PER_CALL]:
                args.extend((key, row))
            self._cache_put(keys=keys, args=args)

    def close(self) -> None:
        self._redis.close()
