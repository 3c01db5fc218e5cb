"""The run engine of one API: micro-batching, de-duplication and per-row failure."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from ersilia_pack.runtime.engine.processes import ProcessDied
from ersilia_pack.runtime.engine.runners import BatchResult, RunError, Runner, RunTimeout

logger = logging.getLogger("ersilia_pack.runtime")


@dataclass
class Outcome:
    """What one input got: its raw row, or ``None`` with the reason."""

    row: list[Any] | None
    error: str | None = None
    stderr_tail: str = ""
    timed_out: bool = False


class ModelBroken(RunError):
    """The model fails even on its own example input: a model failure, not a bad input."""

    def __init__(self, detail: str, stderr_tail: str = "", *, timed_out: bool = False) -> None:
        super().__init__(detail, stderr_tail)
        self.timed_out = timed_out


# With a single slot, background work (jobs) goes in runs this small, so an interactive
# request never waits behind more than one of them.
SINGLE_SLOT_BACKGROUND_BATCH = 32


# A queued input: the input itself (de-duplicated), or (input, draw number) where every
# occurrence of an input is a run of its own (models whose output varies).
_Key = str | tuple[str, int]


class ApiEngine:
    """Runs inputs of one API through a runner.

    Requests enqueue their inputs; a dispatcher takes a free runner slot and then everything
    waiting (up to ``batch_size`` unique inputs), so requests that arrive while runs are in
    flight are merged into the next run and a big request is split across the slots. A failed
    batch is split in halves until the inputs that fail are found; they get null rows.
    """

    def __init__(
        self,
        runner: Runner,
        *,
        batch_size: int,
        timeout: float = 600.0,
        batch_wait: float = 0.0,
        probe_input: str | None = None,
        dedupe: bool = True,
    ) -> None:
        self.runner = runner
        self.dedupe = dedupe
        self._draws = itertools.count()
        self.timeout = timeout
        self.batch_size = max(1, batch_size)
        self.batch_wait = batch_wait
        self.probe_input = probe_input
        self._pending: OrderedDict[_Key, list[asyncio.Future[Outcome]]] = OrderedDict()
        self._background: OrderedDict[_Key, list[asyncio.Future[Outcome]]] = OrderedDict()
        self._background_limit = max(1, runner.concurrency - 1)
        self._background_running = 0
        self._wakeup = asyncio.Event()
        self._slots = asyncio.Semaphore(runner.concurrency)
        self._dispatcher: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self.runs = 0
        self.run_seconds = 0.0

    @property
    def ready(self) -> bool:
        return self._dispatcher is not None and self.runner.ready

    @property
    def waiting(self) -> int:
        """Inputs waiting for a run, interactive and background."""
        return len(self._pending) + len(self._background)

    async def start(self) -> None:
        await self.runner.start()
        self._dispatcher = asyncio.create_task(self._dispatch_forever())

    async def stop(self) -> None:
        if self._dispatcher is not None:
            self._dispatcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._dispatcher
        for task in list(self._running):
            task.cancel()
        await asyncio.gather(*self._running, return_exceptions=True)
        await self.runner.stop()

    async def predict(self, inputs: list[str], *, background: bool = False) -> list[Outcome]:
        """One outcome per input, in order; duplicates are computed once unless ``dedupe`` is
        off (an output that varies: each occurrence is a draw of its own).

        Background work (jobs) waits behind interactive requests and never holds every slot.
        """
        loop = asyncio.get_running_loop()
        queue = self._background if background else self._pending
        keys: list[_Key] = (
            list(inputs) if self.dedupe else [(value, next(self._draws)) for value in inputs]
        )
        futures: dict[_Key, asyncio.Future[Outcome]] = {}
        for key in keys:
            if key not in futures:
                future: asyncio.Future[Outcome] = loop.create_future()
                futures[key] = future
                queue.setdefault(key, []).append(future)
        self._wakeup.set()
        try:
            await asyncio.gather(*futures.values())
        finally:
            self._forget(queue, futures)
        return [futures[key].result() for key in keys]

    @staticmethod
    def _forget(
        queue: OrderedDict[_Key, list[asyncio.Future[Outcome]]],
        futures: dict[_Key, asyncio.Future[Outcome]],
    ) -> None:
        """Drop a cancelled request's inputs that no run has taken yet."""
        for value, future in futures.items():
            waiting = queue.get(value)
            if waiting and future in waiting:
                waiting.remove(future)
                if not waiting:
                    del queue[value]

    def _next_queue(self) -> OrderedDict[_Key, list[asyncio.Future[Outcome]]] | None:
        if self._pending:
            return self._pending
        if self._background and self._background_running < self._background_limit:
            return self._background
        return None

    async def _dispatch_forever(self) -> None:
        while True:
            await self._slots.acquire()
            queue = self._next_queue()
            while queue is None:
                self._wakeup.clear()
                await self._wakeup.wait()
                queue = self._next_queue()
            if self.batch_wait and queue is self._pending and len(queue) < self.batch_size:
                await asyncio.sleep(self.batch_wait)
            # Share what is waiting across the free slots rather than filling one run first;
            # with one slot free, everything waiting goes into this run.
            free = max(1, self.runner.concurrency - len(self._running))
            limit = self.batch_size
            if queue is self._background and self.runner.concurrency == 1:
                limit = min(limit, SINGLE_SLOT_BACKGROUND_BATCH)
            size = min(limit, -(-len(queue) // free))
            batch: OrderedDict[_Key, list[asyncio.Future[Outcome]]] = OrderedDict()
            while queue and len(batch) < size:
                value, waiting = queue.popitem(last=False)
                batch[value] = waiting
            background = queue is self._background
            if background:
                self._background_running += 1
            task = asyncio.create_task(self._run_batch(batch, background))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    async def _run_batch(
        self, batch: OrderedDict[_Key, list[asyncio.Future[Outcome]]], background: bool = False
    ) -> None:
        try:
            inputs = [key if isinstance(key, str) else key[0] for key in batch]
            try:
                outcomes = await self._run_splitting(inputs)
            except Exception as error:  # every caller of the batch must hear of any failure
                if not isinstance(error, RunError):
                    logger.exception("a run of %d inputs could not be made", len(inputs))
                for waiting in batch.values():
                    for future in waiting:
                        if not future.done():
                            future.set_exception(error)
                return
            for outcome, waiting in zip(outcomes, batch.values()):
                for future in waiting:
                    if not future.done():
                        future.set_result(outcome)
        finally:
            if background:
                self._background_running -= 1
                self._wakeup.set()
            self._slots.release()

    async def _run_once(self, inputs: list[str], timeout: float) -> BatchResult:
        self.runs += 1
        loop = asyncio.get_running_loop()
        began = loop.time()
        try:
            return await self.runner.run(inputs, timeout=timeout)
        finally:
            self.run_seconds += loop.time() - began

    async def _run_splitting(self, inputs: list[str]) -> list[Outcome]:
        """The one failure policy: a failed or timed-out batch is first compared with a run on
        the model's own example input (both failing: the model is broken, not the inputs),
        then split in halves until the inputs that fail are found.

        The first run may take the whole timeout; finding the failing inputs shares one more
        timeout in all, each split run getting its share by size (at least a few times the
        probe's time), so one hanging input costs one null row, not a 504 for every request
        merged with it.
        """
        try:
            try:
                result = await self._run_once(inputs, self.timeout)
            except ProcessDied as died:
                # A process killed from outside is no verdict on the inputs: once more, on
                # its replacement.
                logger.warning("%s; running its batch once more", died.detail)
                result = await self._run_once(inputs, self.timeout)
        except RunError as error:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.timeout
            floor = await self._check_model_works(error, deadline)
            return await self._bisect(inputs, error, _Budget(deadline, len(inputs), floor))
        return _outcomes(result)

    async def _check_model_works(self, error: RunError, deadline: float) -> float:
        """Run the example input; ModelBroken when it fails too. The probe's duration, as the
        least time a split run gets."""
        loop = asyncio.get_running_loop()
        if self.probe_input is None:
            return self.timeout / 10
        began = loop.time()
        try:
            await self._run_once([self.probe_input], max(0.001, deadline - began))
        except RunError as probe_error:
            raise ModelBroken(
                error.detail,
                error.stderr_tail or probe_error.stderr_tail,
                timed_out=_timed_out(probe_error),
            ) from error
        return max(1.0, 3 * (loop.time() - began))

    async def _bisect(self, inputs: list[str], error: RunError, budget: _Budget) -> list[Outcome]:
        if len(inputs) == 1:
            logger.info("input %r failed: %s", inputs[0][:80], error.detail)
            return [Outcome(None, error.detail, error.stderr_tail, timed_out=_timed_out(error))]
        middle = len(inputs) // 2
        outcomes: list[Outcome] = []
        for half in (inputs[:middle], inputs[middle:]):
            allowance = budget.allowance(len(half))
            if allowance is None:
                detail = "no time was left to find the inputs that failed"
                outcomes.extend(Outcome(None, detail, timed_out=True) for _ in half)
                continue
            try:
                result = await self._run_once(half, allowance)
            except RunError as half_error:
                outcomes.extend(await self._bisect(half, half_error, budget))
            else:
                outcomes.extend(_outcomes(result))
        return outcomes


@dataclass
class _Budget:
    """The time left to find the failing inputs of one batch, shared by its split runs."""

    deadline: float
    size: int
    floor: float

    def allowance(self, size: int) -> float | None:
        left = self.deadline - asyncio.get_running_loop().time()
        if left <= 0:
            return None
        return min(left, max(left * size / self.size, self.floor))


def _timed_out(error: RunError) -> bool:
    return isinstance(error, RunTimeout) or getattr(error, "timed_out", False)


def _outcomes(result: BatchResult) -> list[Outcome]:
    return [Outcome(row, result.errors.get(i)) for i, row in enumerate(result.rows)]
