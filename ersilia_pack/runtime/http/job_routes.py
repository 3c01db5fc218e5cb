"""The job routes: submit a big run, follow it, fetch its rows (JSON or CSV), cancel it.

A job belongs to the caller that submitted it (``request.state.principal``, set by the API-key
layer; ``""`` when no key is configured): anyone else gets 404, as if it did not exist.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from datetime import datetime, timezone
from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query, Request, Response
from fastapi.responses import JSONResponse, StreamingResponse

from ersilia_pack.runtime.bundle.manifest import Bundle

# app.py adds this router, so import it as a module: the import cycle then resolves.
from ersilia_pack.runtime.http.body import read_inputs
from ersilia_pack.runtime.http.io import dumps, shape
from ersilia_pack.runtime.http.openapi import (
    CacheOnlyQuery,
    FetchCacheQuery,
    OrientQuery,
    SaveCacheQuery,
    request_body,
)
from ersilia_pack.runtime.jobs.manager import JobManager
from ersilia_pack.runtime.settings import ServeSettings
from ersilia_pack.runtime.state.store import CANCELLED, DONE, FAILED, JobRecord

FormatQuery = Annotated[
    Literal["json", "csv"] | None,
    Query(alias="format", description="json (default) or csv; Accept: text/csv also gives CSV"),
]
_ERROR = {
    "content": {
        "application/json": {
            "schema": {"type": "object", "properties": {"detail": {}}, "required": ["detail"]}
        }
    }
}


def _error(description: str) -> dict[str, Any]:
    return {"description": description, **_ERROR}


_SUBMIT_ERRORS: dict[int | str, dict[str, Any]] = {
    400: _error("the body cannot be read (not JSON, or a broken upload)"),
    413: _error("the body or the number of inputs is over the job limits"),
    415: _error("unsupported content type"),
    422: _error("not a list of inputs, or an API the model lacks"),
}
_UNKNOWN = _error("no such job (or it expired, or belongs to another caller)")
_INDEX_BLOCK = 100_000


def _principal(request: Request) -> str:
    return str(getattr(request.state, "principal", "") or "")


def _manager(request: Request) -> JobManager:
    manager: JobManager = request.app.state.jobs
    return manager


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, timezone.utc).isoformat(timespec="seconds")


def job_status(job: JobRecord) -> dict[str, Any]:
    """What ``GET /job/status/{id}`` shows of a job."""
    return {
        "job_id": job.id,
        "api": job.api,
        "state": job.state,
        "done": job.done,
        "total": job.total,
        "null_rows": job.nulls,
        "cached_rows": job.cached,
        "computed_rows": job.computed,
        "chunks": job.chunks,
        "chunks_processed": job.chunks_processed,
        "error": job.error,
        "created": _iso(job.created),
        "updated": _iso(job.updated),
    }


def _not_done(job: JobRecord) -> str:
    if job.state == FAILED:
        return f"job {job.id} failed, so it has no result: {job.error}"
    if job.state == CANCELLED:
        return f"job {job.id} was cancelled, so it has no result"
    return (
        f"job {job.id} is {job.state} ({job.done} of {job.total} rows done): "
        f"poll GET /job/status/{job.id} until its state is done"
    )


def _joined(parts: Iterator[bytes]) -> Iterator[bytes]:
    """The items of JSON arrays or objects (brackets stripped), joined by commas."""
    first = True
    for part in parts:
        if part:
            yield part if first else b"," + part
            first = False


def _json_result(
    manager: JobManager, job: JobRecord, names: list[str], orient: str
) -> Iterator[bytes]:
    """The rows of a finished job shaped by ``orient``, chunk by chunk, exactly as
    ``POST /<api>`` would shape them all at once."""
    empty = [None] * len(names)
    if orient in ("records", "values"):
        yield b"["
        yield from _joined(
            dumps(shape(result.rows, names, orient))[1:-1]
            for _, _, result in manager.result_chunks(job)
        )
        yield b"]"
    elif orient == "split":
        yield b'{"columns":' + dumps(names) + b',"index":['
        yield from _joined(
            dumps(list(range(start, min(start + _INDEX_BLOCK, job.total))))[1:-1]
            for start in range(0, job.total, _INDEX_BLOCK)
        )
        yield b'],"data":['
        yield from _joined(
            dumps(shape(result.rows, names, "values"))[1:-1]
            for _, _, result in manager.result_chunks(job)
        )
        yield b"]}"
    elif orient == "index":
        yield b"{"
        yield from _joined(
            dumps(
                {
                    str(offset + i): dict(zip(names, row if row is not None else empty))
                    for i, row in enumerate(result.rows)
                }
            )[1:-1]
            for offset, _, result in manager.result_chunks(job)
        )
        yield b"}"
    else:  # columns: one pass over the chunks per column keeps memory flat
        yield b"{"
        for j, name in enumerate(names):
            yield (b"," if j else b"") + dumps(name) + b":{"
            yield from _joined(
                dumps(
                    {
                        str(offset + i): (row[j] if row is not None else None)
                        for i, row in enumerate(result.rows)
                    }
                )[1:-1]
                for offset, _, result in manager.result_chunks(job)
            )
            yield b"}"
        yield b"}"


def _csv_result(manager: JobManager, job: JobRecord, names: list[str]) -> Iterator[bytes]:
    """The rows of a finished job as CSV: the input, then the output columns (empty for null)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["input", *names])
    empty = [None] * len(names)
    for _, inputs, result in manager.result_chunks(job):
        for value, row in zip(inputs, result.rows):
            cells = row if row is not None else empty
            writer.writerow([value, *("" if cell is None else cell for cell in cells)])
        yield buffer.getvalue().encode()
        buffer.seek(0)
        buffer.truncate()
    yield buffer.getvalue().encode()


def job_router(bundle: Bundle) -> APIRouter:
    """The ``/job`` routes of a served bundle."""
    apis = list(bundle.apis)
    default_api = "run" if "run" in apis else apis[0]
    example = bundle.apis[default_api].example_input or ["CCO"]
    model_id = bundle.manifest.model_id
    router = APIRouter(prefix="/job", tags=["jobs"])

    async def job_or_404(request: Request, job_id: str) -> JobRecord:
        job = await _manager(request).get(job_id, owner=_principal(request))
        if job is None:
            raise HTTPException(404, f"job {job_id!r} not found: it never existed, or expired")
        return job

    @router.post(
        "/submit",
        status_code=202,
        summary="Submit a big run as a job",
        description=(
            "Same bodies as POST /<api> (a JSON list, or a CSV upload). Answers at once with the "
            "job id; the job runs in the background, survives restarts, and its rows are fetched "
            "with GET /job/result/{job_id} once GET /job/status/{job_id} says done."
        ),
        openapi_extra=request_body(example),
        responses=_SUBMIT_ERRORS,
    )
    async def submit(
        request: Request,
        api: str = Query(default_api, description=f"the API to run: {', '.join(apis)}"),
        fetch_cache: FetchCacheQuery = True,
        save_cache: SaveCacheQuery = True,
        cache_only: CacheOnlyQuery = False,
    ) -> JSONResponse:
        if api not in bundle.apis:
            raise HTTPException(
                422, f"api {api!r} is not an API of {model_id}: use one of {', '.join(apis)}"
            )
        settings: ServeSettings = request.app.state.settings
        inputs = await read_inputs(
            request,
            max_inputs=settings.job_max_inputs,
            max_body_bytes=settings.job_max_body_bytes,
        )
        job = await _manager(request).submit(
            api,
            inputs,
            owner=_principal(request),
            fetch_cache=fetch_cache,
            save_cache=save_cache,
            cache_only=cache_only,
        )
        root = request.scope.get("root_path", "")
        return JSONResponse(
            {"job_id": job.id, "state": job.state, "total": job.total},
            status_code=202,
            headers={"Location": f"{root}/job/status/{job.id}"},
        )

    @router.get(
        "/status/{job_id}",
        summary="State and progress of a job",
        description="state is queued, running, done, failed or cancelled; done counts rows.",
        responses={404: _UNKNOWN},
    )
    async def status(request: Request, job_id: str) -> dict[str, Any]:
        return job_status(await job_or_404(request, job_id))

    @router.get(
        "/result/{job_id}",
        summary="The rows of a finished job",
        description=(
            "One row per input, in input order, shaped by orient as POST /<api> shapes them; "
            "or CSV (format=csv or Accept: text/csv) with the input first. 409 until done."
        ),
        responses={404: _UNKNOWN, 409: _error("the job is not done")},
    )
    async def result(
        request: Request,
        job_id: str,
        orient: OrientQuery = "records",
        format_: FormatQuery = None,
    ) -> Response:
        job = await job_or_404(request, job_id)
        if job.state != DONE:
            raise HTTPException(409, _not_done(job))
        if _manager(request).other_version(job):
            raise HTTPException(
                409,
                f"job {job.id} was computed by another version of the model (model hash "
                f"{job.model_hash[:12]}), whose columns may differ: fetch its result from a "
                "server of that version, or submit the inputs again",
            )
        manager = _manager(request)
        names = bundle.apis[job.api].column_names
        accept = request.headers.get("accept", "")
        if format_ == "csv" or (format_ is None and "text/csv" in accept):
            filename = f"{model_id}-{job.api}-{job.id}.csv"
            return StreamingResponse(
                _csv_result(manager, job, names),
                media_type="text/csv",
                headers={"Content-Disposition": f'attachment; filename="{filename}"'},
            )
        return StreamingResponse(
            _json_result(manager, job, names, orient), media_type="application/json"
        )

    @router.delete(
        "/{job_id}",
        summary="Cancel a job, or delete a finished one",
        description=(
            "An unfinished job stops and its inputs and rows are removed; its status then says "
            "cancelled. A finished (done, failed or cancelled) job is removed entirely."
        ),
        responses={404: _UNKNOWN},
    )
    async def cancel(request: Request, job_id: str) -> dict[str, str]:
        outcome = await _manager(request).cancel(job_id, owner=_principal(request))
        if outcome is None:
            raise HTTPException(404, f"job {job_id!r} not found: it never existed, or expired")
        return {"job_id": job_id, "state": outcome}

    return router
