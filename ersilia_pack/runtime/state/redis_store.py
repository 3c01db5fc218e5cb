"""Jobs and the result cache in Redis, shared by every replica of one model.

Keys live under ``ersilia_pack:<model id>:``. A job is a hash plus a hash of input chunks and a
hash of finished chunks; the replica running it holds a lease key that expires unless renewed,
so a job whose replica died is taken over. Every change that must be atomic is one Lua script.
The ``redis`` package is imported only here, only when a Redis URL is set.
"""

from __future__ import annotations

import json
import time
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from ersilia_pack.errors import ServeError
from ersilia_pack.runtime.bundle.manifest import Bundle
from ersilia_pack.runtime.settings import ServeSettings
from ersilia_pack.runtime.state.store import (
    ACTIVE_STATES,
    CANCELLED,
    Candidate,
    ChunkResult,
    JobRecord,
)

_KEYS_PER_CALL = 500
_FIELDS_PER_CALL = 100

_CLAIM = """
local state = redis.call('HGET', KEYS[1], 'state')
if state ~= 'queued' and state ~= 'running' then return 0 end
local current = redis.call('GET', KEYS[2])
if current and current ~= ARGV[3] then return 0 end
redis.call('SET', KEYS[2], ARGV[1], 'PX', ARGV[2])
redis.call('HSET', KEYS[1], 'state', 'running', 'updated', ARGV[4])
redis.call('ZADD', KEYS[3], ARGV[4], ARGV[5])
return 1
"""
_RENEW = """
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if redis.call('HGET', KEYS[2], 'state') ~= 'running' then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
return 1
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 0
"""
_SAVE_CHUNK = """
if redis.call('HGET', KEYS[1], 'state') ~= 'running' then return 0 end
if redis.call('HSETNX', KEYS[2], ARGV[2], ARGV[3]) == 1 then
  redis.call('HINCRBY', KEYS[1], 'done', ARGV[4])
  redis.call('HINCRBY', KEYS[1], 'nulls', ARGV[5])
end
redis.call('HINCRBY', KEYS[1], 'computed', ARGV[6])
redis.call('HINCRBY', KEYS[1], 'cached', ARGV[7])
redis.call('HINCRBY', KEYS[1], 'chunks_processed', 1)
redis.call('HSET', KEYS[1], 'updated', ARGV[8])
redis.call('ZADD', KEYS[3], ARGV[8], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[9])
redis.call('EXPIRE', KEYS[2], ARGV[9])
redis.call('EXPIRE', KEYS[4], ARGV[9])
return 1
"""
_FINISH = """
if redis.call('HGET', KEYS[1], 'state') ~= 'running' then return 0 end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'error', ARGV[3], 'updated', ARGV[4])
redis.call('DEL', KEYS[2])
redis.call('SREM', KEYS[3], ARGV[1])
redis.call('ZADD', KEYS[4], ARGV[4], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('EXPIRE', KEYS[5], ARGV[5])
redis.call('EXPIRE', KEYS[6], ARGV[5])
return 1
"""
_CANCEL = """
local state = redis.call('HGET', KEYS[1], 'state')
if not state then return false end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
redis.call('SREM', KEYS[5], ARGV[1])
if state == 'queued' or state == 'running' then
  redis.call('HSET', KEYS[1], 'state', 'cancelled', 'updated', ARGV[2])
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  redis.call('ZADD', KEYS[6], ARGV[2], ARGV[1])
  return 'cancelled'
end
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[6], ARGV[1])
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
        try:
            self._redis: Any = redis.Redis.from_url(
                url, socket_timeout=30, socket_connect_timeout=10
            )
            self._redis.ping()
        except (redis.RedisError, ValueError) as error:
            raise ServeError(f"cannot use Redis at {self._url}: {error}") from error
        self._claim = self._redis.register_script(_CLAIM)
        self._renew = self._redis.register_script(_RENEW)
        self._release = self._redis.register_script(_RELEASE)
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

    @property
    def _active(self) -> str:
        return f"{self._prefix}:active"

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
        pipe.sadd(self._active, job.id)
        pipe.execute()

    def get_job(self, job_id: str) -> JobRecord | None:
        fields = self._redis.hgetall(self._job(job_id))
        if not fields:
            return None
        return JobRecord.from_fields({_text(k): _text(v) for k, v in fields.items()})

    def candidates(self, model_hash: str, now: float) -> list[Candidate]:
        ids = sorted(_text(job_id) for job_id in self._redis.smembers(self._active))
        if not ids:
            return []
        pipe = self._redis.pipeline(transaction=False)
        for job_id in ids:
            pipe.hmget(self._job(job_id), ["model_hash", "state", "created"])
            pipe.get(self._job(job_id, "lease"))
        replies = pipe.execute()
        found: list[tuple[float, Candidate]] = []
        gone: list[str] = []
        for i, job_id in enumerate(ids):
            (hash_, state, created), holder = replies[2 * i], replies[2 * i + 1]
            if state is None or _text(state) not in ACTIVE_STATES:
                gone.append(job_id)
            elif _text(hash_) == model_hash:
                candidate = Candidate(job_id, None if holder is None else _text(holder))
                found.append((float(_text(created)), candidate))
        if gone:
            self._redis.srem(self._active, *gone)
        return [candidate for _, candidate in sorted(found, key=lambda item: item[0])]

    @staticmethod
    def _ttl_ms(until: float) -> int:
        return max(1, int((until - time.time()) * 1000))

    def claim(self, job_id: str, holder: str, until: float, *, takeover: str | None) -> bool:
        keys = [self._job(job_id), self._job(job_id, "lease"), self._jobs]
        args: list[Any] = [holder, self._ttl_ms(until), takeover or "", time.time(), job_id]
        return bool(self._claim(keys=keys, args=args))

    def renew(self, job_id: str, holder: str, until: float) -> bool:
        keys = [self._job(job_id, "lease"), self._job(job_id)]
        return bool(self._renew(keys=keys, args=[holder, self._ttl_ms(until)]))

    def release(self, job_id: str, holder: str) -> None:
        self._release(keys=[self._job(job_id, "lease")], args=[holder])

    def chunk_inputs(self, job_id: str, chunk: int) -> list[str] | None:
        value = self._redis.hget(self._job(job_id, "inputs"), str(chunk))
        return None if value is None else list(json.loads(value))

    def finished_chunks(self, job_id: str) -> set[int]:
        return {int(_text(name)) for name in self._redis.hkeys(self._job(job_id, "chunks"))}

    def save_chunk(
        self, job_id: str, chunk: int, result: ChunkResult, *, computed: int, cached: int
    ) -> bool:
        keys = [self._job(job_id), self._job(job_id, "chunks"), self._jobs]
        keys.append(self._job(job_id, "inputs"))
        args: list[Any] = [
            job_id,
            chunk,
            result.dumps(),
            len(result.rows),
            result.nulls,
            computed,
            cached,
            time.time(),
            self._ttl,
        ]
        return bool(self._save_chunk(keys=keys, args=args))

    def read_chunk(self, job_id: str, chunk: int) -> ChunkResult | None:
        value = self._redis.hget(self._job(job_id, "chunks"), str(chunk))
        return None if value is None else ChunkResult.loads(value)

    def finish(self, job_id: str, state: str, error: str | None = None) -> bool:
        keys = [
            self._job(job_id),
            self._job(job_id, "lease"),
            self._active,
            self._jobs,
            self._job(job_id, "chunks"),
            self._job(job_id, "inputs"),
        ]
        args: list[Any] = [job_id, state, error or "", time.time(), self._ttl]
        return bool(self._finish(keys=keys, args=args))

    def cancel(self, job_id: str) -> str | None:
        keys = [
            self._job(job_id),
            self._job(job_id, "inputs"),
            self._job(job_id, "chunks"),
            self._job(job_id, "lease"),
            self._active,
            self._jobs,
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
            pipe.delete(*(self._job(job_id, part) for part in ("", "inputs", "chunks", "lease")))
        pipe.srem(self._active, *ids)
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
