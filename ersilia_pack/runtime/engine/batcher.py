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
        self._borrowed = 0  # slots a search for failing inputs took for a split run
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
            # Work first, then a slot: an idle dispatcher holds no slot, so a search for the
            # failing inputs of a batch may use the free ones.
            queue = self._next_queue()
            while queue is None:
                self._wakeup.clear()
                await self._wakeup.wait()
                queue = self._next_queue()
            await self._slots.acquire()
            queue = self._next_queue()  # a cancelled request may have taken its inputs back
            if queue is None:
                self._slots.release()
                continue
            if self.batch_wait and queue is self._pending and len(queue) < self.batch_size:
                await asyncio.sleep(self.batch_wait)
            # Share what is waiting across the free slots rather than filling one run first;
            # with one slot free, everything waiting goes into this run.
            free = max(1, self.runner.concurrency - len(self._running) - self._borrowed)
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
                outcomes = await self._run_splitting(inputs, background)
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

    async def _run_splitting(self, inputs: list[str], background: bool = False) -> list[Outcome]:
        """The one failure policy: a failed or timed-out batch is first compared with a run on
        the model's own example input (both failing: the model is broken, not the inputs),
        then split in halves until the inputs that fail are found.

        Every split run has a time limit of its own, so an input that runs out of time costs
        its own null row and no one else's: one input alone gets the whole timeout (it is
        only given up on after running alone that long); a group gets a limit fitted to its
        size (see ``_Search``). Halves run side by side where a slot is free.
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
            floor = await self._check_model_works(error)
            search = _Search(self.timeout, len(inputs), floor, borrow=not background)
            return await self._split(inputs, error, search)
        return _outcomes(result)

    async def _check_model_works(self, error: RunError) -> float:
        """Run the example input; ModelBroken when it fails too. A few times the probe's
        duration (at least 1 s, at most a quarter of the timeout), as the least time a split
        run of a group gets."""
        loop = asyncio.get_running_loop()
        if self.probe_input is None:
            return self.timeout / 10
        began = loop.time()
        try:
            await self._run_once([self.probe_input], self.timeout)
        except RunError as probe_error:
            raise ModelBroken(
                error.detail,
                error.stderr_tail or probe_error.stderr_tail,
                timed_out=_timed_out(probe_error),
            ) from error
        # At least a second, where the timeout leaves room for a few such steps.
        return min(max(1.0, 3 * (loop.time() - began)), self.timeout / 4)

    async def _split(self, inputs: list[str], error: RunError, search: _Search) -> list[Outcome]:
        """Outcomes of inputs whose run failed with ``error``."""
        if len(inputs) == 1:  # it ran alone with the whole timeout: a verdict
            logger.info("input %r failed: %s", inputs[0][:80], error.detail)
            return [Outcome(None, error.detail, error.stderr_tail, timed_out=_timed_out(error))]
        middle = len(inputs) // 2
        first, second = await self._side_by_side(inputs[:middle], inputs[middle:], search)
        return first + second

    async def _try(self, inputs: list[str], search: _Search) -> list[Outcome]:
        limit = self.timeout if len(inputs) == 1 else search.limit(len(inputs))
        loop = asyncio.get_running_loop()
        began = loop.time()
        try:
            result = await self._run_once(inputs, limit)
        except RunError as error:
            return await self._split(inputs, error, search)
        search.record(len(inputs), loop.time() - began)
        return _outcomes(result)

    async def _side_by_side(
        self, first: list[str], second: list[str], search: _Search
    ) -> tuple[list[Outcome], list[Outcome]]:
        """Both halves' outcomes: the first on a slot of its own when one is free (never for
        background work, which must leave slots to requests), else one after the other."""
        if not search.borrow or self._slots.locked():
            return await self._try(first, search), await self._try(second, search)
        await self._slots.acquire()  # free: returns at once
        self._borrowed += 1

        async def on_borrowed_slot() -> list[Outcome]:
            try:
                return await self._try(first, search)
            finally:
                self._borrowed -= 1
                self._slots.release()

        task = asyncio.create_task(on_borrowed_slot())
        try:
            later = await self._try(second, search)
        except BaseException:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            raise
        return await task, later


class _Search:
    """Time limits for the split runs of one failed batch of ``size`` inputs.

    A group of inputs gets its share of the timeout by size or, once groups of good inputs
    have answered, three times what they suggest a group of its size needs, whichever is
    less, and at least ``floor`` (a few times a run of the example input). A group that runs
    past its limit is split, so a limit too short costs runs, never rows.
    """

    def __init__(self, timeout: float, size: int, floor: float, *, borrow: bool) -> None:
        self.timeout = timeout
        self.size = size
        self.floor = floor
        self.borrow = borrow
        self._answered: list[tuple[int, float]] = []  # (inputs, seconds) of runs that answered

    def limit(self, size: int) -> float:
        share = self.timeout * size / self.size
        # A group of good inputs takes no longer than a bigger one did, and about in
        # proportion to its size beyond that.
        expected = [seconds * max(1.0, size / count) for count, seconds in self._answered]
        fitted = min([share, *(3 * seconds for seconds in expected)])
        return min(self.timeout, max(self.floor, fitted))

    def record(self, size: int, seconds: float) -> None:
        self._answered.append((size, seconds))


def _timed_out(error: RunError) -> bool:
    return isinstance(error, RunTimeout) or getattr(error, "timed_out", False)


def _outcomes(result: BatchResult) -> list[Outcome]:
    return [
        Outcome(row, result.errors.get(i), result.said.get(i, ""))
        for i, row in enumerate(result.rows)
    ]
