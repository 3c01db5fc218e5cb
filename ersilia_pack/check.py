"""The pack-time checks: serve the new bundle the way ``ersilia_serve`` will and call it.

Each check imports the bundle's generated app, starts it (start-up and shut-down run) and talks
to it over HTTP (httpx's ASGI transport, on an event loop of its own), so a bundle whose app
cannot import, start or document itself fails the pack.

1. The example check: ``GET /openapi.json`` and ``GET /docs`` answer, and every API answers
   ``POST /<api>?with_meta=true`` on its example input, cold, with its example output.
2. Warm versus cold: a legacy script of the warm shape runs warm only when its warm run gives
   exactly what the cold run gave, in a bounded time.
3. Overlapping runs versus a single run: the example input runs in several requests at once,
   split across slots; an API whose overlapping runs fail or disagree is served one run at a
   time (``decided.serial`` in the manifest).
4. Forked versus separate slots: a load-once API's example first runs in a worker that loads
   on its own; then in a slot forked from a loaded parent, as it is served by default. An API
   whose ``load()`` leaves threads running, or whose forked run fails, hangs or disagrees, is
   served with a process per slot (``decided.fork: false`` in the manifest), since forking
   after some load() is not safe (a thread it started may hold a lock while the slot is forked).

The decisions (``warm``, ``serial``, ``fork``, ``in_process``, ``gpu``) are written into each
API's ``decided`` record in the bundle's manifest.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import shutil
import tempfile
import threading
import time
from collections.abc import Coroutine, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
from fastapi import FastAPI

from ersilia_pack.errors import RenderError, ServeError
from ersilia_pack.runtime.bundle.examples import Rows, compare, row_differences
from ersilia_pack.runtime.bundle.loader import create_bundle_app, forget_bundle_app
from ersilia_pack.runtime.bundle.manifest import (
    ApiDefinition,
    PackDecisions,
    load_bundle,
    write_manifest,
)
from ersilia_pack.runtime.settings import ServeSettings

logger = logging.getLogger("ersilia_pack")

WARM_CHECK_MIN_SECONDS = 30.0
# A warm or overlapping run may take this many times the cold run before it counts as hung.
TIME_FACTOR = 10
OVERLAPPING_REQUESTS = 4
OVERLAPPING_WORKERS = 2  # slots: each loads the model, so few
MAX_REPORTED = 10

_T = TypeVar("_T")


class AppClient:
    """Calls an app in this process over HTTP (httpx's ASGI transport) from plain code.

    The app runs on an event loop in a thread of its own, as it would under uvicorn; each
    method blocks until its answer, and calls from several threads at once overlap on that
    loop. ``lifespan`` runs the app's start-up on ``start`` and its shut-down on ``close``.
    """

    def __init__(self, app: FastAPI, *, lifespan: bool = True) -> None:
        self.app = app
        self._lifespan = lifespan
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="ersilia-pack-check", daemon=True
        )
        self._stack = contextlib.AsyncExitStack()
        self._client: httpx.AsyncClient | None = None

    def _call(self, coroutine: Coroutine[Any, Any, _T]) -> _T:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result()

    async def _start(self) -> None:
        if self._lifespan:
            await self._stack.enter_async_context(self.app.router.lifespan_context(self.app))
        # An exception in a route is answered 500 (as uvicorn would), not raised here.
        transport = httpx.ASGITransport(app=self.app, raise_app_exceptions=False)
        self._client = await self._stack.enter_async_context(
            httpx.AsyncClient(transport=transport, base_url="http://check", timeout=None)
        )

    def start(self) -> None:
        """Start the loop and the app (its start-up, with ``lifespan``); raises what it raised."""
        self._thread.start()
        try:
            self._call(self._start())
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        """Shut the app down and stop its loop."""
        if not self._thread.is_alive():
            return
        try:
            self._call(self._stack.aclose())
        finally:
            self._call(_cancel_tasks())
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def request(self, method: str, path: str, **options: Any) -> httpx.Response:
        if self._client is None:
            raise RuntimeError("the app is not started")
        return self._call(self._client.request(method, path, **options))

    def get(self, path: str, **options: Any) -> httpx.Response:
        return self.request("GET", path, **options)

    def post(self, path: str, **options: Any) -> httpx.Response:
        return self.request("POST", path, **options)


async def _cancel_tasks() -> None:
    """Cancel what the app left running on its loop, and wait for it to end."""
    current = asyncio.current_task()
    left = [task for task in asyncio.all_tasks() if task is not current]
    for task in left:
        task.cancel()
    await asyncio.gather(*left, return_exceptions=True)


@dataclass
class CheckReport:
    """What the checks found, per API."""

    checked: list[str] = field(default_factory=list)
    differences: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    warm: dict[str, bool] = field(default_factory=dict)
    serial: dict[str, str] = field(default_factory=dict)  # API: why it runs one at a time
    separate: dict[str, str] = field(default_factory=dict)  # API: why its slots are not forked
    in_process: set[str] = field(default_factory=set)  # warm APIs whose runs are not forked
    gpu: set[str] = field(default_factory=set)  # APIs whose forked runs met CUDA's refusal

    @property
    def ok(self) -> bool:
        return not self.differences and not self.failures


@dataclass
class Answer:
    """What ``POST /<api>?with_meta=true`` answered: rows in input order and failed rows."""

    rows: Rows = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    error: str | None = None  # the request itself failed (status and detail)
    timed_out: bool = False
    seconds: float = 0.0


def _detail(response: Any) -> str:
    try:
        detail = response.json().get("detail")
    except (ValueError, AttributeError):
        detail = None
    return str(detail if detail is not None else response.text[:300])


def post_inputs(client: AppClient, api: ApiDefinition, inputs: list[str]) -> Answer:
    """Run ``inputs`` through ``POST /<api>?with_meta=true`` and read the answer."""
    began = time.monotonic()
    response = client.post(f"/{api.name}", params={"with_meta": "true"}, json=inputs)
    seconds = time.monotonic() - began
    if response.status_code != 200:
        return Answer(
            error=f"{_detail(response)} (HTTP {response.status_code})",
            timed_out=response.status_code == 504,
            seconds=seconds,
        )
    try:
        body = response.json()
        records = body["result"]
        failed = {int(item["index"]): str(item["reason"]) for item in body["meta"]["failed"]}
        rows: Rows = [[record.get(name) for name in api.column_names] for record in records]
    except (ValueError, KeyError, TypeError, AttributeError) as error:
        return Answer(error=f"an answer of the wrong shape ({error!r})", seconds=seconds)
    if len(rows) != len(inputs):
        return Answer(error=f"{len(rows)} rows for {len(inputs)} inputs", seconds=seconds)
    return Answer(rows=rows, failed=failed, seconds=seconds)


@contextlib.contextmanager
def check_state_dir(bundle_dir: Path) -> Iterator[Path]:
    """A state folder for one check inside the bundle's own (``state/check-XXXXXXXX``): the
    runs see the paths they will see when served, or longer ones, so what passes here passes
    there. Removed afterwards, with ``state/`` itself when the check made it."""
    own = bundle_dir / "state"
    made = not own.exists()
    own.mkdir(mode=0o700, exist_ok=True)
    try:
        with tempfile.TemporaryDirectory(prefix="check-", dir=own) as state:
            yield Path(state)
    finally:
        if made:
            shutil.rmtree(own, ignore_errors=True)


@contextlib.contextmanager
def serving(bundle_dir: Path, **settings: Any) -> Iterator[AppClient]:
    """The bundle's generated app, started, with its state in a temporary folder.

    Settings are explicit (ERSILIA_PACK_* variables of the packing shell do not apply) and
    the result cache is off, so every request runs the model.
    """
    with check_state_dir(bundle_dir) as state:
        # the pack's own checks stand in for the serve-time self-check, and must see a warm
        # run fail rather than be moved to cold
        values = {
            "workers": 1,
            "cache_size": 0,
            "self_check": False,
            "fallback": False,
            **settings,
            "state_dir": state,
        }
        try:
            app = create_bundle_app(bundle_dir, ServeSettings.model_validate(values))
        except ServeError as error:
            raise RenderError(f"the bundle cannot be served: {error}") from error
        client = AppClient(app)
        try:
            client.start()
        except Exception as error:
            raise RenderError(
                f"the bundle's app failed to start: {type(error).__name__}: {error}"
            ) from error
        try:
            yield client
        finally:
            client.close()


def check_documents(client: AppClient) -> list[str]:
    """Problems of ``GET /openapi.json`` and ``GET /docs``, one line each."""
    problems = []
    for path in ("/openapi.json", "/docs"):
        response = client.get(path)
        if response.status_code != 200:
            problems.append(f"GET {path} answered {response.status_code}: {_detail(response)}")
        elif path == "/openapi.json":
            try:
                response.json()
            except ValueError:
                problems.append("GET /openapi.json did not answer JSON")
    return problems


def check_app(bundle_dir: Path) -> None:
    """Import the bundle's app and fetch its documents without running the model (--no-check).

    RenderError when the app cannot import or document itself.
    """
    try:
        with check_state_dir(bundle_dir) as state:
            settings = ServeSettings.model_validate(
                {"workers": 1, "state_dir": state, "self_check": False}
            )
            try:
                app = create_bundle_app(bundle_dir, settings)
            except ServeError as error:
                raise RenderError(f"the bundle cannot be served: {error}") from error
            # Without its lifespan the app's start-up (the model) does not run.
            client = AppClient(app, lifespan=False)
            client.start()
            try:
                problems = check_documents(client)
            finally:
                client.close()
    finally:
        forget_bundle_app(bundle_dir)
    if problems:
        lines = "\n".join(f"  - {problem}" for problem in problems)
        raise RenderError(f"the bundle cannot be served:\n{lines}")


def _example_failures(api: ApiDefinition, answer: Answer) -> list[str]:
    """Example inputs that got a null row with a reason where the example output has values."""
    problems = []
    for index, reason in sorted(answer.failed.items()):
        expected = api.example_output[index] if index < len(api.example_output) else None
        if expected is not None and all(not value.strip() for value in expected):
            continue  # the example output says this input has no values
        value = api.example_input[index]
        problems.append(f"{api.name}: the example input {value[:80]!r} failed: {reason}")
    return problems


def _time_limit(seconds: float, timeout: float) -> float:
    """How long a warm or overlapping run may take: a multiple of the cold run, bounded."""
    return min(timeout, float(math.ceil(max(WARM_CHECK_MIN_SECONDS, TIME_FACTOR * seconds))))


def _write_decisions(
    bundle_dir: Path,
    warm: dict[str, bool],
    serial: dict[str, str],
    separate: dict[str, str] | None = None,
    *,
    in_process: set[str] | None = None,
    gpu: set[str] | None = None,
) -> None:
    """Record in the manifest how each API is served: what a check tries next, or at the end
    what the checks decided."""
    manifest = load_bundle(bundle_dir).manifest
    apis = []
    for api in manifest.apis:
        decided = PackDecisions(
            warm=warm.get(api.name, False),
            serial=api.name in serial,
            fork=api.name not in (separate or {}),
            in_process=warm.get(api.name, False) and api.name in (in_process or set()),
            gpu=api.name in (gpu or set()),
        )
        apis.append(api.model_copy(update={"decided": decided}))
    write_manifest(bundle_dir, manifest.model_copy(update={"apis": apis}))


def _first_difference(single: Rows, other: Rows, inputs: list[str]) -> str | None:
    for index, (left, right) in enumerate(zip(single, other)):
        if left != right:
            return f"input {inputs[index][:80]!r} got {right!r}, a single run gave {left!r}"
    return None


def _warm_agrees(
    client: AppClient, api: ApiDefinition, cold: Answer, limit: float, *, kind: str = "warm"
) -> str | None:
    """None when the warm (or forked) run gives exactly what the cold run gave, else why not."""
    warm = post_inputs(client, api, api.example_input)
    if warm.timed_out:
        return f"its {kind} run failed (it did not finish within {limit:g} s)"
    if warm.error:
        return f"its {kind} run failed ({warm.error})"
    if warm.failed.keys() != cold.failed.keys():
        return f"its {kind} run failed on other inputs than the cold run"
    difference = _first_difference(cold.rows, warm.rows, api.example_input)
    if difference:
        return f"its {kind} run differs from the cold run: {difference}"
    return None


def _overlapping_runs(
    client: AppClient, api: ApiDefinition, single: Answer, *, compare_values: bool
) -> str | None:
    """None when overlapping requests each get what a single run gave, else why not."""
    inputs = api.example_input
    # Each request sends the inputs in another order, so runs hold other mixes of inputs.
    orders = [inputs[k % len(inputs) :] + inputs[: k % len(inputs)] for k in range(len(inputs))]
    requests = [orders[k % len(orders)] for k in range(OVERLAPPING_REQUESTS)]
    with ThreadPoolExecutor(OVERLAPPING_REQUESTS) as pool:
        answers = list(pool.map(lambda values: post_inputs(client, api, values), requests))
    expected = dict(zip(inputs, single.rows))
    failed_alone = {inputs[i] for i in single.failed}
    for values, answer in zip(requests, answers):
        if answer.error:
            return f"fail: {answer.error}"
        failed = {values[i] for i in answer.failed}
        if failed != failed_alone:
            name = next(iter(failed ^ failed_alone))
            reason = answer.failed.get(values.index(name), "it failed in a single run")
            return f"fail: the input {name[:80]!r} failed ({reason})"
        if compare_values:
            single_rows = [expected[value] for value in values]
            # within the example check's tolerance: the last bit of a double may differ
            differences = row_differences(api, single_rows, answer.rows, values)
            if differences:
                more = f" (and {len(differences) - 1} more cells)" if len(differences) > 1 else ""
                return f"disagree: {differences[0]}{more}"
    return None


def check_examples(bundle_dir: Path, *, timeout: float = 600.0) -> CheckReport:
    """Serve the bundle, check its documents and examples, and choose warm and serial APIs.

    The example input of each API runs cold; legacy scripts of the warm shape then also run
    warm (``report.warm`` says where both agree exactly); last the example runs in overlapping
    requests (``report.serial`` names the APIs whose overlapping runs fail or disagree). Both
    decisions are recorded in the bundle's manifest.
    """
    report = CheckReport()
    apis = load_bundle(bundle_dir).manifest.apis
    cold: dict[str, Answer] = {}
    try:
        with serving(bundle_dir, cold=True, separate_workers=True, timeout=timeout) as client:
            report.failures.extend(check_documents(client))
            for api in apis:
                if not api.example_input:
                    continue
                answer = post_inputs(client, api, api.example_input)
                if answer.error:
                    report.failures.append(f"{api.name}: the example input failed: {answer.error}")
                    continue
                problems = _example_failures(api, answer)
                report.failures.extend(problems)
                report.checked.append(api.name)
                if api.example_output:
                    report.differences.extend(compare(api, answer.rows))
                if not problems:
                    cold[api.name] = answer
        candidates = [api for api in apis if api.warm_script and api.name in cold]
        if candidates:
            slowest = max(cold[api.name].seconds for api in candidates)
            limit = _time_limit(slowest, timeout)
            _write_decisions(bundle_dir, {api.name: True for api in candidates}, {})
            with serving(bundle_dir, timeout=limit) as client:
                for api in candidates:
                    why = _warm_agrees(client, api, cold[api.name], limit)
                    report.warm[api.name] = why is None
                    _note_gpu(report, api, why)
                    if why:  # warm runs without forking are tried next
                        logger.info("%s cannot run warm in forked children: %s", api.name, why)
                    else:
                        logger.info("%s runs warm: its warm run matches the cold run", api.name)
        refused = [api for api in candidates if not report.warm.get(api.name)]
        if refused:
            _check_in_process(bundle_dir, refused, cold, report, timeout)
        _write_decisions(bundle_dir, report.warm, {}, in_process=report.in_process)
        _check_forked(bundle_dir, [api for api in apis if api.name in cold], cold, report, timeout)
        _write_decisions(bundle_dir, report.warm, {}, report.separate, in_process=report.in_process)
        overlapping = [api for api in apis if api.name in cold]
        _check_overlapping(bundle_dir, overlapping, cold, report, timeout=timeout)
        _write_decisions(
            bundle_dir,
            report.warm,
            report.serial,
            report.separate,
            in_process=report.in_process,
            gpu=report.gpu,
        )
    finally:
        forget_bundle_app(bundle_dir)
    return report


IN_PROCESS_RUNS = 3
# What CUDA says in a process forked after it was initialised: the model runs on a GPU.
CUDA_REFUSAL = ("Cannot re-initialize CUDA in forked subprocess", "CUDA initialization")


def _note_gpu(report: CheckReport, api: ApiDefinition, why: str | None) -> None:
    if why and any(sign in why for sign in CUDA_REFUSAL):
        report.gpu.add(api.name)
        logger.info("%s runs on a GPU: its forked run met CUDA's refusal", api.name)


def _check_in_process(
    bundle_dir: Path,
    apis: list[ApiDefinition],
    cold: dict[str, Answer],
    report: CheckReport,
    timeout: float,
) -> None:
    """Legacy scripts whose forked warm runs failed: warm with the runs in the warm process
    itself (libraries that refuse a forked process, as CUDA does) where several runs in a row
    in one process each give exactly what the cold run gave."""
    limit = _time_limit(max(cold[api.name].seconds for api in apis), timeout)
    _write_decisions(
        bundle_dir, {api.name: True for api in apis}, {}, in_process={api.name for api in apis}
    )
    with serving(bundle_dir, timeout=limit) as client:
        for api in apis:
            why = None
            for _ in range(IN_PROCESS_RUNS):
                why = _warm_agrees(client, api, cold[api.name], limit, kind="in-process warm")
                if why:
                    break
            if why:
                logger.info("%s runs cold: %s", api.name, why)
                continue
            report.warm[api.name] = True
            report.in_process.add(api.name)
            logger.info(
                "%s runs warm in a process per slot, without forking: its forked warm run failed, "
                "and %d runs in a row in one process match the cold run",
                api.name,
                IN_PROCESS_RUNS,
            )


def _check_forked(
    bundle_dir: Path,
    apis: list[ApiDefinition],
    cold: dict[str, Answer],
    report: CheckReport,
    timeout: float,
) -> None:
    """Load-once APIs that are not safe to fork: ``report.separate``.

    One whose ``load()`` leaves threads running (a slot forked while one of them holds a lock
    hangs when it needs that lock: one sample cannot tell, so any such thread decides), or
    whose run in a forked slot fails, hangs or disagrees.
    """
    forkable = [api for api in apis if api.kind == "py"]
    if not forkable:
        return
    limit = _time_limit(max(cold[api.name].seconds for api in forkable), timeout)
    with serving(bundle_dir, timeout=limit) as client:
        for api in forkable:
            threads = _threads_after_load(client, api, limit)
            if threads:
                why: str | None = (
                    f"its load() leaves {len(threads)} threads running "
                    f"({', '.join(threads[:5])}), so a slot forked from it may hang on a lock "
                    "one of them holds"
                )
            else:
                why = _warm_agrees(client, api, cold[api.name], limit, kind="forked")
                _note_gpu(report, api, why)
            if why:
                report.separate[api.name] = why
                logger.warning("%s is served with a process per slot: %s", api.name, why)


def _threads_after_load(client: AppClient, api: ApiDefinition, limit: float) -> list[str]:
    """The threads that ``load()`` left running in the API's forked parent, once it loaded
    (at most ``limit`` seconds); none when it did not load in time."""
    service = getattr(getattr(client.app, "state", None), "service", None)
    engine = getattr(service, "engines", {}).get(api.name)
    pool = getattr(getattr(engine, "runner", None), "pool", None)
    if pool is None or not hasattr(pool, "threads_after_load"):
        return []
    deadline = time.monotonic() + limit
    while not pool.ready and pool.load_error is None and time.monotonic() < deadline:
        time.sleep(0.05)
    return [str(name) for name in pool.threads_after_load]


def _check_overlapping(
    bundle_dir: Path,
    apis: list[ApiDefinition],
    cold: dict[str, Answer],
    report: CheckReport,
    *,
    timeout: float,
) -> None:
    if not apis:
        return
    manifest = load_bundle(bundle_dir).manifest
    largest = max(len(api.example_input) for api in apis)
    slowest = max(cold[api.name].seconds for api in apis)
    limit = _time_limit(slowest, timeout)
    # Small batches, so even one request is split across the slots as the engine does.
    batch_size = max(1, -(-largest // (2 * OVERLAPPING_WORKERS)))
    compare_values = manifest.output_consistency.lower() == "fixed"
    with serving(
        bundle_dir, workers=OVERLAPPING_WORKERS, batch_size=batch_size, timeout=limit
    ) as client:
        for api in apis:
            why = _overlapping_runs(client, api, cold[api.name], compare_values=compare_values)
            if why:
                report.serial[api.name] = why
                kind, _, detail = why.partition(": ")
                logger.warning(
                    "%s is served one run at a time: overlapping runs %s: %s",
                    api.name,
                    kind,
                    detail,
                )
