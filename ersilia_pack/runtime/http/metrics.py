"""``GET /metrics``: what a served model did, in Prometheus' text format.

Each app has a registry of its own, so many apps can live in one process (as in the tests).
HTTP figures come from a middleware; rows come from the predictor, which tells of every
prediction it answers (requests and jobs alike); the engine's queues, runs and restarts and the
jobs by state are read when the metrics are scraped.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Iterator

from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector
from starlette.routing import Match, Mount, compile_path, get_route_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ersilia_pack.runtime.engine import gpus
from ersilia_pack.runtime.engine.service import ModelService, Prediction
from ersilia_pack.runtime.jobs.manager import JobManager
from ersilia_pack.runtime.state.store import CANCELLED, DONE, FAILED, QUEUED, RUNNING

JOB_STATES = (QUEUED, RUNNING, DONE, FAILED, CANCELLED)

PREFIX = "ersilia_pack"
# A model run takes from milliseconds to minutes.
SECONDS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
UNMATCHED = "unmatched"
# Label values come from a fixed set, whatever callers send: a made-up method or path must
# not add a series (each one is kept for the life of the server).
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"})
OTHER_METHOD = "other"


def method_label(method: str) -> str:
    """The request's method if it is a standard one, else ``other``."""
    return method if method in METHODS else OTHER_METHOD


class Metrics:
    """The figures of one app, kept in its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            f"{PREFIX}_http_requests",
            "HTTP requests answered, by route template, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            f"{PREFIX}_http_request_duration_seconds",
            "Time to answer an HTTP request, by route template and method",
            ["route", "method"],
            buckets=SECONDS,
            registry=self.registry,
        )
        self.rows = Counter(
            f"{PREFIX}_rows",
            "Rows answered by API: computed (the model ran for them), cached (from the result "
            "cache) and failed (null rows, a subset of the other two or not in the cache)",
            ["api", "outcome"],
            registry=self.registry,
        )
        self.prediction_seconds = Histogram(
            f"{PREFIX}_prediction_duration_seconds",
            "Time to answer one prediction that ran the model (a request, or a job's chunk), "
            "waiting for a free worker included",
            ["api"],
            buckets=SECONDS,
            registry=self.registry,
        )

    def observe_prediction(
        self, api: str, computed: int, prediction: Prediction, seconds: float
    ) -> None:
        """Count the rows of one answered prediction (the predictor calls it)."""
        self.rows.labels(api, "computed").inc(computed)
        self.rows.labels(api, "cached").inc(prediction.cached)
        self.rows.labels(api, "failed").inc(len(prediction.errors))
        if computed:
            self.prediction_seconds.labels(api).observe(seconds)


class _StateCollector(Collector):
    """Figures read at scrape time from the running engine and the job store."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app

    def describe(self) -> list[Metric]:
        # Described as nothing, so registering never calls collect() before start-up.
        return []

    def collect(self) -> Iterator[Metric]:
        service: ModelService | None = getattr(self.app.state, "service", None)
        if service is None:  # not started yet
            return
        runs = CounterMetricFamily(
            f"{PREFIX}_model_runs", "Runs of the model (batches of inputs), by API", labels=["api"]
        )
        run_seconds = CounterMetricFamily(
            f"{PREFIX}_model_run_seconds",
            "Seconds spent in runs of the model, by API (over model_runs_total: the mean run)",
            labels=["api"],
        )
        waiting = GaugeMetricFamily(
            f"{PREFIX}_inputs_waiting",
            "Inputs waiting for a run, by API (requests and jobs)",
            labels=["api"],
        )
        restarts = CounterMetricFamily(
            f"{PREFIX}_worker_restarts",
            "Model processes that died or ran out of time and were replaced, by API",
            labels=["api"],
        )
        check_seconds = GaugeMetricFamily(
            f"{PREFIX}_self_check_seconds",
            "Seconds the start-up self-check of each API took (its example, as served)",
            labels=["api"],
        )
        check_passed = GaugeMetricFamily(
            f"{PREFIX}_self_check_passed",
            "1 when the API reproduced its example at start (or was not checked), else 0",
            labels=["api"],
        )
        mode_changes = CounterMetricFamily(
            f"{PREFIX}_mode_changes",
            "Times an API moved to a safer mode (cold, a process per slot, one run at a time) "
            "because the served one did not reproduce its example or failed where cold works",
            labels=["api"],
        )
        gpu_memory = GaugeMetricFamily(
            f"{PREFIX}_gpu_memory_bytes",
            "GPU memory the model processes of an API on a GPU hold, by API and process",
            labels=["api", "pid"],
        )
        held = gpus.gpu_memory_by_pid() if service.gpus else {}
        for name, engine in service.engines.items():
            if service.gpus and service.device_of(name) != "cpu":
                for pid in service.model_pids(name):
                    gpu_memory.add_metric([name, str(pid)], held.get(pid, 0))
            runs.add_metric([name], engine.runs)
            run_seconds.add_metric([name], engine.run_seconds)
            waiting.add_metric([name], engine.waiting)
            restarts.add_metric([name], engine.runner.restarts)
            check = service.checks[name]
            check_seconds.add_metric([name], check.seconds)
            check_passed.add_metric([name], 1.0 if check.serving else 0.0)
            mode_changes.add_metric([name], service.mode_changes[name])
        yield from (runs, run_seconds, waiting, restarts, check_seconds, check_passed, mode_changes)
        yield gpu_memory
        jobs: JobManager | None = getattr(self.app.state, "jobs", None)
        if jobs is not None:
            yield _active_jobs(jobs)


def _active_jobs(manager: JobManager) -> Metric:
    """Jobs of this model by state, from the store (every replica's, not only ours)."""
    counts = dict.fromkeys(JOB_STATES, 0)
    counts.update(manager.store.count_jobs(manager.model_hash))
    family = GaugeMetricFamily(f"{PREFIX}_jobs", "Jobs of this model, by state", labels=["state"])
    for state, count in counts.items():
        family.add_metric([state], count)
    return family


class _Routes:
    """The route template of a request (``/job/status/{job_id}``), never its raw path."""

    def __init__(self, app: FastAPI) -> None:
        self.app = app
        self._templates: list[tuple[re.Pattern[str], str]] | None = None

    def of(self, scope: Scope, before: Scope) -> str:
        """``scope`` as the router left it; ``before``, a copy taken before routing.

        Always a template written in the code, or ``unmatched``: never the path a caller sent.
        """
        route = scope.get("route")
        if route is not None and isinstance(getattr(route, "path", None), str):
            return str(route.path)
        for candidate in self.app.router.routes:
            if isinstance(candidate, Mount) and candidate.matches(before)[0] == Match.FULL:
                return candidate.path
        # Never routed (refused by the API-key check): match the documented templates.
        path = get_route_path(before)
        for pattern, template in self._documented():
            if pattern.match(path):
                return template
        return UNMATCHED

    def _documented(self) -> list[tuple[re.Pattern[str], str]]:
        if self._templates is None:
            paths = self.app.openapi().get("paths", {})
            self._templates = [(compile_path(path)[0], path) for path in paths]
        return self._templates


class MetricsMiddleware:
    """Pure ASGI middleware: count every HTTP request and time it, by route and status."""

    def __init__(self, app: ASGIApp, fastapi_app: FastAPI, metrics: Metrics) -> None:
        self.app = app
        self.routes = _Routes(fastapi_app)
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        before = dict(scope)  # routing rewrites some keys (a mount's root path)
        status = 500

        async def send_with_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_with_status)
        finally:
            route = self.routes.of(scope, before)
            method = method_label(str(scope.get("method", "")))
            self.metrics.requests.labels(route, method, str(status)).inc()
            self.metrics.latency.labels(route, method).observe(time.perf_counter() - started)


def add_metrics(app: FastAPI) -> Metrics:
    """Count requests on ``app`` and serve ``GET /metrics``; the app's :class:`Metrics`.

    Add it after the other middleware, so it is the outermost and sees every answer (a refusal
    by the API-key check too).
    """
    metrics = Metrics()
    metrics.registry.register(_StateCollector(app))
    app.state.metrics = metrics
    app.add_middleware(MetricsMiddleware, fastapi_app=app, metrics=metrics)

    @app.get(
        "/metrics",
        tags=["health"],
        summary="Figures of this server in Prometheus' text format",
        response_class=Response,
        responses={200: {"content": {CONTENT_TYPE_LATEST: {"schema": {"type": "string"}}}}},
    )
    async def metrics_route(request: Request) -> Response:
        # The job store is read while scraping: off the event loop.
        body = await asyncio.to_thread(generate_latest, metrics.registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST)

    return metrics
