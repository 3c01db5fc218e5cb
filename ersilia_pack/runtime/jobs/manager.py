"""Jobs: big runs that need no open connection and survive restarts.

A job's inputs are split in chunks and queued when it is submitted. Every replica serving the
model claims queued chunks one at a time while it has a free lane (as many lanes as the engine
gives background work), runs each through the same engine as ``POST /<api>`` (as background
work, so interactive requests go first) and records its result at once; the job is done when
its last chunk is recorded. A replica renews the claims it holds while it computes them. The
chunks of a replica that died are taken over by another one (or by the same server, restarted):
at once when it ran on this host, else when its claims have not been renewed for
``job_claim_seconds``.

A chunk the model fails on (``PredictionError``: a timeout, or a model that failed even on its
example input) is tried again a few times with a growing pause. If it keeps failing while the
model still answers its example input, the chunk's rows are null with the reason; if the model
no longer answers, the job fails. Rows of a chunk that came back null because their run ran
out of time are tried once more, by themselves, before they stay null.

The jobs of another version of the model (a repack with another model hash, sharing the
store) are never run here, since that version may compute other rows; once no server of that
version has been seen for ``job_claim_seconds``, they fail and say so.

The batch command (``ersilia_pack run --repository_dir``) runs its inputs as a job of this
same manager, in a store of its own beside the output file, so one failure policy holds for a
batch run here and one sent to a server.
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

from ersilia_pack.runtime.engine.service import Prediction, PredictionError
from ersilia_pack.runtime.predictor import Predictor
from ersilia_pack.runtime.settings import ServeSettings
from ersilia_pack.runtime.state.store import (
    ACTIVE_STATES,
    FAILED,
    FINISHED,
    QUEUED,
    STOPPED,
    ChunkClaim,
    ChunkResult,
    JobRecord,
    Store,
    is_job_id,
    new_job_id,
)

# under the runtime's logger; `ersilia_pack run` shows its lines with -v only
logger = logging.getLogger("ersilia_pack.runtime.jobs")

POLL_SECONDS = 2.0
# Longest wait for new chunks in one call to a store that can wait (Redis); shutdown waits it.
BLOCK_SECONDS = 1.0
PURGE_SECONDS = 3600.0
RETRY_SECONDS = 0.5


def host_key() -> str:
    """This machine and process namespace: process ids mean the same thing only within it."""
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        namespace = ""
    return f"{socket.gethostname()}{namespace}".replace("/", "_")


def holder_is_dead(holder: str) -> bool:
    """Whether a claim holder is a process of this host that no longer exists.

    Holders are ``<host key>/<pid>/<nonce>``. A holder elsewhere, or a live process, counts as
    alive: only its claims going unrenewed free its chunks.
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
    """The job was cancelled, failed elsewhere, or was removed while a chunk of it ran."""


class JobManager:
    """Submits, runs, cancels and expires the jobs of one served bundle, chunk by chunk."""

    def __init__(
        self,
        store: Store,
        predictor: Predictor,
        settings: ServeSettings,
        *,
        background: bool = True,
        poll_seconds: float = POLL_SECONDS,
        retry_seconds: float = RETRY_SECONDS,
    ) -> None:
        """``background``: chunks wait behind requests and leave them a slot; off where
        nothing else uses the engine (the batch command), so chunks take every slot."""
        self.store = store
        self.predictor = predictor
        self.service = service = predictor.service
        self.settings = settings
        self.background = background
        self.claim_seconds = settings.job_claim_seconds
        # Renewed well before anyone may take a claim over.
        self.poll_seconds = min(poll_seconds, self.claim_seconds / 3)
        self.retries = settings.job_chunk_retries
        self.retry_seconds = retry_seconds
        slots = service.background_slots if background else service.slots
        self.lanes = max(slots(api) for api in service.bundle.apis)
        self.holder = f"{host_key()}/{os.getpid()}/{uuid.uuid4().hex[:8]}"
        self.model_hash = service.bundle.manifest.model_hash
        self._inflight: dict[ChunkClaim, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._chunk_ended = asyncio.Event()
        # The last job that failed here because the model did, and how (the batch command
        # reports it).
        self.last_failure: tuple[str, PredictionError] | None = None
        self._stopping = False
        self._claimer: asyncio.Task[None] | None = None
        self._ticker: asyncio.Task[None] | None = None
        self._last_purge = 0.0

    async def start(self) -> None:
        """Expire old jobs, then keep claiming chunks to run and renewing the claims held."""
        await self._purge()
        self._claimer = asyncio.create_task(self._claim_forever())
        self._ticker = asyncio.create_task(self._tick_forever())

    async def stop(self, *, finish_running: bool = False) -> None:
        """Stop the chunks in flight and give their claims up, so others take them at once;
        with ``finish_running``, claim no more chunks but finish and record those in flight."""
        self._stopping = True
        self._wake.set()
        if self._claimer is not None:
            # Not cancelled: a claim it is receiving must land in _inflight to be released.
            with contextlib.suppress(Exception):
                await self._claimer
        if finish_running:  # their claims are still renewed meanwhile
            await asyncio.gather(*self._inflight.values(), return_exceptions=True)
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        tasks = dict(self._inflight)
        for task in tasks.values():
            task.cancel()
        await asyncio.gather(*tasks.values(), return_exceptions=True)
        if tasks:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(self.store.release, list(tasks), self.holder)

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
        """Keep a new job, queue its chunks and wake the claimer; the job as submitted."""
        size = self.settings.job_chunk_size
        chunks = [inputs[start : start + size] for start in range(0, len(inputs), size)]
        now = time.time()
        job = JobRecord(
            id=new_job_id(),
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
        """The job, or None when it does not exist, belongs to another caller or was made for
        another model (models may share a state folder). A job of another version of this
        model (another model hash, in a store kept per model: Redis) is found, so its
        callers see it finish, or fail once that version is no longer served."""
        if not is_job_id(job_id):
            return None
        job = await asyncio.to_thread(self.store.get_job, job_id)
        if job is None or job.owner != owner:
            return None
        if job.model_hash != self.model_hash and not self.store.versions_shared:
            return None
        return job

    def other_version(self, job: JobRecord) -> bool:
        """Whether another version of the model (another model hash) made the job."""
        return job.model_hash != self.model_hash

    async def cancel(self, job_id: str, *, owner: str) -> str | None:
        """Cancel an unfinished job or remove a finished one; the outcome, or None if unknown.

        Chunks of the job in flight here stop at once; other replicas stop theirs when they
        next renew their claims.
        """
        if await self.get(job_id, owner=owner) is None:
            return None
        outcome = await asyncio.to_thread(self.store.cancel, job_id)
        self._stop_chunks_of(job_id)
        return outcome

    async def chunk_ended(self, seconds: float) -> None:
        """Wait until a chunk run here ends (recorded, dropped or failed), at most ``seconds``."""
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self._chunk_ended.wait(), seconds)
        self._chunk_ended.clear()

    def result_chunks(self, job: JobRecord) -> Iterator[tuple[int, list[str], ChunkResult]]:
        """Offset, inputs and rows of each chunk of a finished job, in order (blocking)."""
        for chunk in range(job.chunks):
            result = self.store.read_chunk(job.id, chunk)
            inputs = self.store.chunk_inputs(job.id, chunk)
            if result is None or inputs is None:
                raise JobGone(f"job {job.id} lost chunk {chunk}: it was cancelled or expired")
            yield chunk * job.chunk_size, inputs, result

    # claiming chunks

    async def _wait(self, seconds: float) -> None:
        if seconds > 0 and not self._stopping:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wake.wait(), seconds)
        self._wake.clear()

    async def _claim_forever(self) -> None:
        next_takeover = 0.0
        while not self._stopping:
            free = self.lanes - len(self._inflight)
            if free <= 0:
                await self._wait(self.poll_seconds)  # a chunk ending sets _wake
                continue
            try:
                claims: list[ChunkClaim] = []
                if time.monotonic() >= next_takeover:
                    next_takeover = time.monotonic() + self.poll_seconds
                    claims = await asyncio.to_thread(
                        self.store.take_over,
                        self.model_hash,
                        self.holder,
                        free,
                        idle=self.claim_seconds,
                        is_dead=holder_is_dead,
                    )
                    for claim in claims:
                        logger.info("job %s: chunk %d taken over", claim.job_id, claim.chunk)
                if not claims:
                    started = time.monotonic()
                    claims = await asyncio.to_thread(
                        self.store.claim_chunks,
                        self.model_hash,
                        self.holder,
                        free,
                        block=BLOCK_SECONDS,
                    )
                    if not claims:  # a store that cannot wait for work answered at once
                        await self._wait(BLOCK_SECONDS - (time.monotonic() - started))
            except Exception:
                # A store that is briefly unreachable must not stop the claimer for good.
                logger.exception("looking for chunks to run failed; trying again shortly")
                await self._wait(self.poll_seconds)
                continue
            for claim in claims:
                if claim not in self._inflight:
                    self._inflight[claim] = asyncio.create_task(self._run(claim))

    async def _tick_forever(self) -> None:
        next_strays = 0.0
        while True:
            await asyncio.sleep(self.poll_seconds)
            try:
                await self._renew()
                if time.monotonic() >= next_strays:
                    next_strays = time.monotonic() + self.claim_seconds / 2
                    await self._fail_stranded()
                if time.monotonic() - self._last_purge > PURGE_SECONDS:
                    await self._purge()
            except Exception:
                logger.exception("renewing chunk claims failed; trying again shortly")

    async def _renew(self) -> None:
        claims = list(self._inflight)
        if not claims:
            return
        kept = await asyncio.to_thread(self.store.renew, claims, self.holder)
        for claim, ok in zip(claims, kept):
            task = self._inflight.get(claim)
            if not ok and task is not None:
                logger.info(
                    "job %s: chunk %d stopped: the job was cancelled or failed, or the chunk "
                    "was taken over",
                    claim.job_id,
                    claim.chunk,
                )
                task.cancel()

    async def _fail_stranded(self) -> None:
        """Fail the unfinished jobs of a model version no longer served (a repack with another
        model hash replaced it), which no server would ever run: their callers learn why."""
        stranded = await asyncio.to_thread(
            self.store.stranded_jobs,
            self.model_hash,
            idle=self.claim_seconds,
            is_dead=holder_is_dead,
        )
        for job in stranded:
            detail = (
                f"the model version that owned this job (model hash {job.model_hash[:12]}) is "
                f"no longer served: the servers now serve model hash {self.model_hash[:12]}, "
                f"which does not run another version's jobs; submit the inputs again"
            )
            if await asyncio.to_thread(self.store.finish, job.id, FAILED, detail):
                logger.warning("job %s failed: %s", job.id, detail)

    async def _purge(self) -> None:
        self._last_purge = time.monotonic()
        cutoff = time.time() - self.settings.job_ttl_hours * 3600
        removed = await asyncio.to_thread(self.store.purge, cutoff)
        if removed:
            logger.info("removed %d jobs older than %g hours", removed, self.settings.job_ttl_hours)

    def _stop_chunks_of(self, job_id: str) -> None:
        for claim, task in list(self._inflight.items()):
            if claim.job_id == job_id:
                task.cancel()

    # running chunks

    async def _run(self, claim: ChunkClaim) -> None:
        try:
            await self._run_chunk(claim)
        except JobGone:
            logger.info("job %s: chunk %d dropped: the job is no longer running", *_at(claim))
        except asyncio.CancelledError:
            raise
        except Exception as error:
            logger.exception("job %s: chunk %d failed", *_at(claim))
            await self._fail(
                claim.job_id, f"internal error ({type(error).__name__}); see the server log"
            )
        finally:
            self._inflight.pop(claim, None)
            self._wake.set()
            self._chunk_ended.set()

    async def _fail(self, job_id: str, detail: str) -> None:
        try:
            await asyncio.to_thread(self.store.finish, job_id, FAILED, detail)
        except Exception:
            # The claim goes unrenewed and the chunk is taken over: better than losing it.
            logger.exception("job %s: could not record its failure", job_id)
        self._stop_chunks_of(job_id)

    async def _drop(self, claim: ChunkClaim) -> None:
        """End the claim on a chunk of a job that stopped (renewing it drops it)."""
        await asyncio.to_thread(self.store.renew, [claim], self.holder)
        raise JobGone(claim.job_id)

    async def _run_chunk(self, claim: ChunkClaim) -> None:
        job = await asyncio.to_thread(self.store.get_job, claim.job_id)
        if job is None or job.state not in ACTIVE_STATES:
            await self._drop(claim)
            return
        if not self.service.has_api(job.api):
            await self._fail(job.id, f"{job.api!r} is not an API of this model")
            return
        inputs = await asyncio.to_thread(self.store.chunk_inputs, job.id, claim.chunk)
        if inputs is None:
            await self._drop(claim)
            return
        prediction = await self._predict(job, claim, inputs)
        if prediction is None:
            return
        computed = 0 if job.options.get("cache_only") else len(inputs) - prediction.cached
        outcome = await asyncio.to_thread(
            self.store.save_chunk,
            claim,
            ChunkResult(prediction.rows, prediction.errors),
            computed=computed,
            cached=prediction.cached,
        )
        if outcome == STOPPED:
            raise JobGone(job.id)
        if outcome == FINISHED:
            logger.info("job %s done", job.id)

    async def _predict(
        self, job: JobRecord, claim: ChunkClaim, inputs: list[str]
    ) -> Prediction | None:
        """The chunk's rows, tried again when the model fails; None when the job failed."""
        options = job.options
        for attempt in range(self.retries + 1):
            try:
                prediction = await self.predictor.predict(
                    job.api,
                    inputs,
                    fetch_cache=options.get("fetch_cache", True),
                    save_cache=options.get("save_cache", True),
                    cache_only=options.get("cache_only", False),
                    background=self.background,
                )
            except PredictionError as error:
                failure = error
            else:
                return await self._again_if_late(job, claim, inputs, prediction)
            if attempt < self.retries:
                pause = self.retry_seconds * 2**attempt
                logger.warning(
                    "job %s: chunk %d failed (%s); trying again in %g s",
                    *_at(claim),
                    failure.detail,
                    pause,
                )
                await asyncio.sleep(pause)
        if await self._model_answers(job.api):
            logger.warning(
                "job %s: chunk %d failed %d times while the model answers its example input; "
                "its rows are null: %s",
                *_at(claim),
                self.retries + 1,
                failure.detail,
            )
            errors = dict.fromkeys(range(len(inputs)), failure.detail)
            return Prediction(rows=[None] * len(inputs), errors=errors)
        logger.warning("job %s failed: %s", job.id, failure.detail)
        self.last_failure = (job.id, failure)
        await self._fail(job.id, failure.detail)
        return None

    async def _again_if_late(
        self, job: JobRecord, claim: ChunkClaim, inputs: list[str], prediction: Prediction
    ) -> Prediction:
        """The chunk's rows, where those null because their run ran out of time (a machine
        busy for a while) were tried once more by themselves; the engine splits them again."""
        late = [
            i
            for i, reason in prediction.errors.items()
            if prediction.rows[i] is None and any(words in reason for words in _RAN_OUT_OF_TIME)
        ]
        if not late or job.options.get("cache_only"):
            return prediction
        logger.info("job %s: chunk %d: %d rows ran out of time; once more", *_at(claim), len(late))
        try:
            again = await self.predictor.predict(
                job.api,
                [inputs[i] for i in late],
                fetch_cache=False,
                save_cache=job.options.get("save_cache", True),
                background=self.background,
            )
        except PredictionError:
            return prediction
        rows = list(prediction.rows)
        errors = dict(prediction.errors)
        for position, i in enumerate(late):
            rows[i] = again.rows[position]
            errors.pop(i)
            if position in again.errors:
                errors[i] = again.errors[position]
        return Prediction(rows=rows, errors=errors, cached=prediction.cached)

    async def _model_answers(self, api: str) -> bool:
        """Whether the model still gives a row for its own example input."""
        example = self.service.bundle.apis[api].example_input
        if not example:
            return False
        try:
            probe = await self.predictor.predict(
                api, example[:1], fetch_cache=False, save_cache=False, background=self.background
            )
        except PredictionError:
            return False
        return any(row is not None for row in probe.rows)


# How the engine words a run that ran out of time ("run did not finish within 600 s", "no run
# worker process was free within 600 s").
_RAN_OUT_OF_TIME = ("did not finish within", "was free within")


def _at(claim: ChunkClaim) -> tuple[str, int]:
    return claim.job_id, claim.chunk
