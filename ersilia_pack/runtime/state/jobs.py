"""Jobs: big runs that need no open connection and survive restarts.

A job's inputs are split in chunks when it is submitted. The replica that holds the job's lease
runs the chunks through the same engine as ``POST /<api>`` (as background work, so interactive
requests go first) and records each finished chunk at once. A restarted server, or another
replica when the job's replica died, takes the lease and runs only the chunks not yet recorded.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
import uuid
from collections.abc import Iterator

from ersilia_pack.runtime.engine.service import ModelService, PredictionError
from ersilia_pack.runtime.settings import ServeSettings
from ersilia_pack.runtime.state.store import (
    DONE,
    FAILED,
    QUEUED,
    ChunkResult,
    JobRecord,
    Store,
)

logger = logging.getLogger("ersilia_pack.runtime")

LEASE_SECONDS = 30.0
POLL_SECONDS = 2.0
PURGE_SECONDS = 3600.0
MAX_ACTIVE_JOBS = 4


def host_key() -> str:
    """This machine and process namespace: process ids mean the same thing only within it."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return f"{socket.gethostname()}{namespace}".replace("/", "_")


def holder_is_dead(holder: str) -> bool:
    """Whether a lease holder is a process of this host that no longer exists.

    Holders are ``<host key>/<pid>/<nonce>``. A holder elsewhere, or a live process, counts as
    alive: only its lease running out frees its jobs.
    """
    host, _, rest = holder.partition("/")
    pid_text = rest.partition("/")[0]
    if host != host_key() or not pid_text.isdigit() or int(pid_text) == os.getpid():
        return False
    try:
        os.kill(int(pid_text), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class JobGone(Exception):
    """The job was cancelled or removed while it ran."""


class JobManager:
    """Submits, runs, resumes, cancels and expires the jobs of one served bundle."""

    def __init__(
        self,
        store: Store,
        service: ModelService,
        settings: ServeSettings,
        *,
        lease_seconds: float = LEASE_SECONDS,
        poll_seconds: float = POLL_SECONDS,
        max_active: int = MAX_ACTIVE_JOBS,
    ) -> None:
        self.store = store
        self.service = service
        self.settings = settings
        self.lease_seconds = lease_seconds
        self.poll_seconds = poll_seconds
        self.max_active = max_active
        self.holder = f"{host_key()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"
        self.model_hash = service.bundle.manifest.model_hash
        self._running: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._ticker: asyncio.Task[None] | None = None
        self._last_purge = 0.0

    async def start(self) -> None:
        """Expire old jobs, resume unfinished ones, then keep watching for jobs to run."""
        await self._purge()
        await self._scan()
        self._ticker = asyncio.create_task(self._tick_forever())

    async def stop(self) -> None:
        """Stop running jobs and give their leases up, so a restart resumes them at once."""
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        tasks = dict(self._running)
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        for job_id in tasks:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.store.release, job_id, self.holder)

    # what the routes call

    async def submit(
        self,
        api: str,
        inputs: list[str],
        *,
        owner: str,
        fetch_cache: bool = True,
        save_cache: bool = True,
        cache_only: bool = False,
    ) -> JobRecord:
        """Keep a new job and wake the runner; the job's record as submitted."""
        size = self.settings.job_chunk_size
        chunks = [inputs[start : start + size] for start in range(0, len(inputs), size)]
        now = time.time()
        job = JobRecord(
            id=uuid.uuid4().hex,
            api=api,
            owner=owner,
            model_hash=self.model_hash,
            state=QUEUED,
            total=len(inputs),
            chunk_size=size,
            chunks=len(chunks),
            options={
                "fetch_cache": fetch_cache,
                "save_cache": save_cache,
                "cache_only": cache_only,
            },
            created=now,
            updated=now,
        )
        await asyncio.to_thread(self.store.create_job, job, chunks)
        logger.info("job %s: %d inputs of %s in %d chunks", job.id, job.total, api, job.chunks)
        self._wake.set()
        return job

    async def get(self, job_id: str, *, owner: str) -> JobRecord | None:
        """The job, or None when it does not exist or belongs to another caller."""
        job = await asyncio.to_thread(self.store.get_job, job_id)
        return job if job is not None and job.owner == owner else None

    async def cancel(self, job_id: str, *, owner: str) -> str | None:
        """Cancel an unfinished job or remove a finished one; the outcome, or None if unknown."""
        if await self.get(job_id, owner=owner) is None:
            return None
        outcome = await asyncio.to_thread(self.store.cancel, job_id)
        task = self._running.get(job_id)
        if task is not None:
            task.cancel()
        return outcome

    def result_chunks(self, job: JobRecord) -> Iterator[tuple[int, list[str], ChunkResult]]:
        """Offset, inputs and rows of each chunk of a finished job, in order (blocking)."""
        for chunk in range(job.chunks):
            result = self.store.read_chunk(job.id, chunk)
            inputs = self.store.chunk_inputs(job.id, chunk)
            if result is None or inputs is None:
                raise JobGone(f"job {job.id} lost chunk {chunk}: it was cancelled or expired")
            yield chunk * job.chunk_size, inputs, result

    # running jobs

    async def _tick_forever(self) -> None:
        while True:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.poll_seconds)
            self._wake.clear()
            try:
                await self._renew()
                if time.monotonic() - self._last_purge > PURGE_SECONDS:
                    await self._purge()
                await self._scan()
            except Exception:
                # A store that is briefly unreachable must not stop the runner for good.
                logger.exception("looking for jobs to run failed; trying again shortly")

    async def _purge(self) -> None:
        self._last_purge = time.monotonic()
        cutoff = time.time() - self.settings.job_ttl_hours * 3600
        removed = await asyncio.to_thread(self.store.purge, cutoff)
        if removed:
            logger.info("removed %d jobs older than %g hours", removed, self.settings.job_ttl_hours)

    async def _renew(self) -> None:
        until = time.time() + self.lease_seconds
        for job_id, task in list(self._running.items()):
            if not await asyncio.to_thread(self.store.renew, job_id, self.holder, until):
                logger.warning("job %s: lease lost (cancelled, or taken over); stopping", job_id)
                task.cancel()

    async def _scan(self) -> None:
        """Take jobs nobody runs (new, or left by a replica that stopped or died)."""
        if len(self._running) >= self.max_active:
            return
        for candidate in await asyncio.to_thread(
            self.store.candidates, self.model_hash, time.time()
        ):
            if len(self._running) >= self.max_active:
                return
            if candidate.job_id in self._running:
                continue
            holder = candidate.holder
            if holder is not None and holder != self.holder and not holder_is_dead(holder):
                continue
            until = time.time() + self.lease_seconds
            claimed = await asyncio.to_thread(
                self.store.claim, candidate.job_id, self.holder, until, takeover=holder
            )
            if claimed:
                if holder is not None:
                    logger.info("job %s: taken over from %s", candidate.job_id, holder)
                task = asyncio.create_task(self._run(candidate.job_id))
                self._running[candidate.job_id] = task

    async def _run(self, job_id: str) -> None:
        try:
            await self._run_chunks(job_id)
        except JobGone:
            logger.info("job %s was cancelled", job_id)
        except asyncio.CancelledError:
            raise
        except PredictionError as error:
            logger.warning("job %s failed: %s", job_id, error.detail)
            await self._fail(job_id, error.detail)
        except Exception as error:
            logger.exception("job %s failed", job_id)
            await self._fail(job_id, f"internal error ({type(error).__name__}); see the server log")
        finally:
            self._running.pop(job_id, None)
            self._wake.set()

    async def _fail(self, job_id: str, detail: str) -> None:
        try:
            await asyncio.to_thread(self.store.finish, job_id, FAILED, detail)
        except Exception:
            # The lease runs out and the job is retried: better than losing it.
            logger.exception("job %s: could not record its failure", job_id)

    async def _run_chunks(self, job_id: str) -> None:
        job = await asyncio.to_thread(self.store.get_job, job_id)
        if job is None:
            raise JobGone(job_id)
        if job.api not in self.service.engines:
            raise PredictionError(422, f"{job.api!r} is not an API of this model")
        finished = await asyncio.to_thread(self.store.finished_chunks, job_id)
        todo = iter([chunk for chunk in range(job.chunks) if chunk not in finished])
        if finished:
            logger.info("job %s: resuming, %d of %d chunks done", job_id, len(finished), job.chunks)

        async def work() -> None:
            for chunk in todo:  # one iterator shared by the workers: each chunk runs once
                await self._run_chunk(job, chunk)

        # A few chunks in flight keep every background slot of the engine busy.
        workers = [asyncio.create_task(work()) for _ in range(max(1, self.settings.workers))]
        try:
            await asyncio.gather(*workers)
        finally:
            for worker in workers:
                worker.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        if await asyncio.to_thread(self.store.finish, job_id, DONE):
            logger.info("job %s done", job_id)

    async def _run_chunk(self, job: JobRecord, chunk: int) -> None:
        inputs = await asyncio.to_thread(self.store.chunk_inputs, job.id, chunk)
        if inputs is None:
            raise JobGone(job.id)
        options = job.options
        prediction = await self.service.predict(
            job.api,
            inputs,
            fetch_cache=options.get("fetch_cache", True),
            save_cache=options.get("save_cache", True),
            cache_only=options.get("cache_only", False),
            background=True,
        )
        computed = 0 if options.get("cache_only") else len(inputs) - prediction.cached
        result = ChunkResult(prediction.rows, prediction.errors)
        saved = await asyncio.to_thread(
            self.store.save_chunk,
            job.id,
            chunk,
            result,
            computed=computed,
            cached=prediction.cached,
        )
        if not saved:
            raise JobGone(job.id)
