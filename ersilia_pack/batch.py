"""The batch command's core: a file of inputs through a model, into a CSV or JSON file.

The model is a served one (a job on the server, through the client) or a bundle run here: a
job too, of the server's own job manager, kept in ``OUTPUT.jobs.sqlite`` and computed by the
engine the server uses (no HTTP). So both ways share one failure policy: a chunk the model
fails on is tried again, and one that keeps failing while the model still answers its example
input gets null rows (the reason is logged); only a model that no longer answers stops the run.

Either way the run can be stopped and run again with the same arguments: rows go to
``OUTPUT.partial`` chunk by chunk, and ``OUTPUT.state.json`` records, after each chunk, how
many rows are in it and the job's id, so a rerun follows the same job and computes only what
the job has not recorded. The finished file replaces OUTPUT at the end and the resume files go
away. (With ``--dask`` the chunks are Dask tasks instead, and a chunk that fails stops the run.)
"""

from __future__ import annotations

import asyncio
import csv
import hashlib
import importlib.util
import io
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from ersilia_pack.client import Client, Job, NotFound
from ersilia_pack.errors import ErsiliaPackError, ServeError
from ersilia_pack.runtime.inputs import InputError, read_file

logger = logging.getLogger("ersilia_pack.batch")

FORMATS = {".csv": "csv", ".json": "json"}
STATE_VERSION = 1
DOWNLOAD_CHUNK = 5000
DASK_CHUNK = 1000
# Longest wait between looks at the local job (for its next chunk, and for a stop).
LOOK_SECONDS = 0.2


class InputFileError(ErsiliaPackError):
    """The input file, the output path or the API asked for cannot be used."""

    exit_code = 1


class BatchError(ErsiliaPackError):
    """The model, or the server running it, failed; rows done so far are kept for a rerun."""

    exit_code = 4


class Interrupted(ErsiliaPackError):
    """The run was stopped before the end; the same command continues it."""

    exit_code = 130


@dataclass(frozen=True)
class Progress:
    """How far a batch run is: rows done of all, rows per second in this run, seconds left."""

    done: int
    total: int
    rate: float
    left: float | None
    stage: str  # "computing", "waiting for the job to start" (queued) or "downloading"


@dataclass(frozen=True)
class BatchSummary:
    """What a finished batch run wrote."""

    output: Path
    total: int
    failed: int
    resumed: int  # rows an earlier, interrupted run had already done
    job_id: str | None = None


def read_inputs(path: Path) -> list[str]:
    """The inputs of a file, read as the server reads a body: a CSV with a header (``.csv``;
    the input column is input, smiles or text by name), else one input per line. Inputs are
    kept as they are; only blank lines are skipped."""
    try:
        return read_file(path)
    except FileNotFoundError as error:
        raise InputFileError(f"input file {path} does not exist") from error
    except IsADirectoryError as error:
        raise InputFileError(f"input {path} is a folder: give a CSV or text file") from error
    except UnicodeDecodeError as error:
        raise InputFileError(f"input file {path} is not UTF-8 text: {error}") from error
    except OSError as error:
        raise InputFileError(f"input file {path} cannot be read: {error}") from error
    except InputError as error:
        raise InputFileError(f"input file {path}: {error}") from error


def _output_format(path: Path) -> str:
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise InputFileError(
            f"output {path} must end in .csv or .json (the suffix picks the format)"
        )
    if path.is_dir():
        raise InputFileError(f"output {path} is a folder: give a file name ending in .csv or .json")
    if not path.parent.is_dir():
        raise InputFileError(f"the folder of output {path} does not exist")
    return kind


# A cell a spreadsheet would run as a formula (OWASP, "CSV Injection"); a leading quote
# makes it text.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (dict, list)):
        value = json.dumps(value)
    if isinstance(value, str) and value.startswith(_FORMULA_START):
        return "'" + value
    return value


class _Writer:
    """Rows as bytes of the output format: CSV (input, then columns) or a JSON list of records."""

    def __init__(self, kind: str, columns: Sequence[str]) -> None:
        self.kind = kind
        self.columns = list(columns)

    def header(self) -> bytes:
        if self.kind == "json":
            return b"["
        return self._csv([["input", *self.columns]])

    def rows(
        self, inputs: Sequence[str], rows: Sequence[Sequence[Any] | None], first: bool
    ) -> bytes:
        empty = [None] * len(self.columns)
        if self.kind == "csv":
            return self._csv(
                [_cell(value), *(_cell(cell) for cell in (row if row is not None else empty))]
                for value, row in zip(inputs, rows)
            )
        parts = []
        for value, row in zip(inputs, rows):
            record = {"input": value, **dict(zip(self.columns, row if row is not None else empty))}
            parts.append(json.dumps(record, allow_nan=False))
        text = ",\n".join(parts)
        return (("\n" if first else ",\n") + text).encode() if parts else b""

    def footer(self) -> bytes:
        return b"\n]\n" if self.kind == "json" else b""

    @staticmethod
    def _csv(rows: Iterable[Sequence[Any]]) -> bytes:
        buffer = io.StringIO()
        csv.writer(buffer, lineterminator="\n").writerows(rows)
        return buffer.getvalue().encode()


class _Resume:
    """``OUTPUT.partial`` (rows so far), ``OUTPUT.state.json`` (how many, and the job) and,
    for a bundle run here, ``OUTPUT.jobs.sqlite`` (the job's chunks)."""

    def __init__(self, output: Path, key: str, total: int) -> None:
        self.output = output
        self.partial = output.with_name(output.name + ".partial")
        self.state_path = output.with_name(output.name + ".state.json")
        self.jobs = output.with_name(output.name + ".jobs.sqlite")
        self.key = key
        self.state: dict[str, Any] = {
            "version": STATE_VERSION,
            "key": key,
            "total": total,
            "rows_done": 0,
            "failed": 0,
            "offset": 0,
            "job_id": None,
            "job_offset": 0,  # the input the job starts at (a local job takes what is left)
        }
        self.handle: BinaryIO | None = None

    def _saved(self) -> dict[str, Any] | None:
        try:
            saved = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            logger.warning("%s is unreadable: starting over", self.state_path)
            return None
        if not isinstance(saved, dict) or saved.get("version") != STATE_VERSION:
            return None
        if saved.get("key") != self.key:
            logger.warning(
                "%s is of another input file, API or model: starting over", self.state_path
            )
            return None
        try:
            size = self.partial.stat().st_size
        except FileNotFoundError:
            size = -1
        if size < int(saved.get("offset", 0)):
            if saved.get("job_id"):  # the job is on the server: only its download starts over
                return {**saved, "rows_done": 0, "failed": 0, "offset": 0}
            logger.warning("%s is missing or short: starting over", self.partial)
            return None
        return saved

    def open(self, header: bytes) -> int:
        """Open the partial file where the last recorded chunk ended; the rows already done."""
        saved = self._saved()
        if saved is not None and saved.get("offset"):
            self.state.update(saved)
            handle = self.partial.open("r+b")
            handle.truncate(int(self.state["offset"]))  # drop a chunk written but not recorded
            handle.seek(0, os.SEEK_END)
        else:
            if saved is not None:
                self.state["job_id"] = saved.get("job_id")
                self.state["job_offset"] = saved.get("job_offset", 0)
            else:  # jobs of another input file, API or model
                self.remove_jobs()
            handle = self.partial.open("w+b")
            handle.write(header)
            self._commit(handle, rows=0, failed=0)
        self.handle = handle
        return int(self.state["rows_done"])

    @property
    def done(self) -> int:
        """Rows written so far."""
        return int(self.state["rows_done"])

    def kept(self) -> str:
        """What a failure's message adds about the rows already written."""
        return f"; the {self.done} rows done are kept for a rerun" if self.done else ""

    def record_rows(self, writer: _Writer, values: list[str], rows: list[Any], failed: int) -> None:
        """A chunk's inputs and their rows (None: failed) through ``writer``, recorded."""
        self.record(writer.rows(values, rows, self.done == 0), len(values), failed)

    def record(self, data: bytes, rows: int, failed: int) -> None:
        """Append a chunk's rows, make them durable, then count them as done."""
        assert self.handle is not None
        self.handle.write(data)
        self._commit(self.handle, rows=rows, failed=failed)

    def _commit(self, handle: BinaryIO, *, rows: int, failed: int) -> None:
        handle.flush()
        os.fsync(handle.fileno())
        self.state["rows_done"] = int(self.state["rows_done"]) + rows
        self.state["failed"] = int(self.state["failed"]) + failed
        self.state["offset"] = handle.tell()
        self.save()

    def save(self) -> None:
        temporary = self.state_path.with_name(self.state_path.name + ".tmp")
        temporary.write_text(json.dumps(self.state))
        os.replace(temporary, self.state_path)

    def restart_download(self, header_size: int) -> None:
        """Through a server, a new job's rows replace whatever an old one wrote."""
        assert self.handle is not None
        self.handle.truncate(header_size)
        self.handle.seek(0, os.SEEK_END)
        self.state.update(rows_done=0, failed=0)
        self._commit(self.handle, rows=0, failed=0)

    def finish(self, footer: bytes) -> None:
        assert self.handle is not None
        self.handle.write(footer)
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.close()
        os.replace(self.partial, self.output)
        self.state_path.unlink(missing_ok=True)
        self.remove_jobs()

    def remove_jobs(self) -> None:
        """The local job store, with SQLite's files beside it."""
        for suffix in ("", "-wal", "-shm"):
            self.jobs.with_name(self.jobs.name + suffix).unlink(missing_ok=True)

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None


class _Meter:
    """Rows per second and time left, from the rows done in this run."""

    def __init__(self, total: int, start: int) -> None:
        self.total = total
        self.start_rows = start
        self.started = time.monotonic()

    def progress(self, done: int, stage: str) -> Progress:
        elapsed = time.monotonic() - self.started
        fresh = done - self.start_rows
        rate = fresh / elapsed if elapsed > 0 and fresh > 0 else 0.0
        left = (self.total - done) / rate if rate > 0 else None
        return Progress(done=done, total=self.total, rate=rate, left=left, stage=stage)


def _file_hash(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _key(input_path: Path, api: str, target: str) -> str:
    text = json.dumps([_file_hash(input_path), api, target])
    return hashlib.sha256(text.encode()).hexdigest()


def run_batch(
    *,
    input_path: Path,
    output_path: Path,
    api: str = "run",
    url: str | None = None,
    repository_dir: Path | None = None,
    api_key: str | None = None,
    workers: int | None = None,
    chunk_size: int | None = None,
    progress: Callable[[Progress], object] | None = None,
    should_stop: Callable[[], bool] | None = None,
    dask: str | None = None,
) -> BatchSummary:
    """Run every input of ``input_path`` through ``api`` into ``output_path``; what it wrote.

    Exactly one of ``url`` (a served model: one job on it) and ``repository_dir`` (a model's
    repository folder or a bundle, run here) says where the model is. ``should_stop`` is asked
    between chunks: once it says yes the chunks in flight are finished and recorded, and
    Interrupted is raised; the same call later continues from there. ``dask`` (a scheduler's
    address, with ``repository_dir`` on storage every worker reads) computes the chunks on a
    Dask cluster instead of here.
    """
    if (url is None) == (repository_dir is None):
        raise InputFileError("give either a server URL or a repository folder, not both or none")
    if dask is not None and repository_dir is None:
        raise InputFileError("--dask computes a bundle: give --repository_dir, not --url")
    kind = _output_format(output_path)
    inputs = read_inputs(input_path)
    stop = should_stop or (lambda: False)
    report = progress or (lambda _: None)
    if url is not None:
        return _run_remote(
            url, api, api_key, inputs, input_path, output_path, kind, report, stop, chunk_size
        )
    assert repository_dir is not None
    return _run_local(
        repository_dir,
        api,
        inputs,
        input_path,
        output_path,
        kind,
        report,
        stop,
        workers,
        chunk_size,
        dask,
    )


def _interrupted(resume: _Resume, *, on_server: bool = False) -> Interrupted:
    done, total = resume.state["rows_done"], resume.state["total"]
    where = f"; job {resume.state['job_id']} goes on on the server" if on_server else ""
    return Interrupted(
        f"interrupted with {done} of {total} rows written{where}: run the same command "
        f"again to continue (progress is kept in {resume.state_path.name})"
    )


# --repository_dir: the bundle, here


def _run_local(
    repository_dir: Path,
    api: str,
    inputs: list[str],
    input_path: Path,
    output_path: Path,
    kind: str,
    report: Callable[[Progress], object],
    stop: Callable[[], bool],
    workers: int | None,
    chunk_size: int | None,
    dask: str | None = None,
) -> BatchSummary:
    # The runtime (and the model's engine) is needed only here: import it when used.
    from ersilia_pack.runtime.bundle.manifest import find_bundle, load_bundle
    from ersilia_pack.runtime.settings import ServeSettings

    try:
        bundle_dir = find_bundle(repository_dir)
    except ServeError as error:
        raise InputFileError(str(error)) from error
    bundle = load_bundle(bundle_dir)
    if api not in bundle.apis:
        raise InputFileError(
            f"api {api!r} is not an API of {bundle.manifest.model_id}: "
            f"use one of {', '.join(bundle.apis)}"
        )
    settings = ServeSettings.from_env(workers=workers)
    # Here a chunk is a job's chunk, as on a server; on Dask a chunk is a task: each worker
    # takes a few at once.
    size = max(1, chunk_size or (DASK_CHUNK if dask else settings.job_chunk_size))
    settings = settings.model_copy(update={"job_chunk_size": size})
    target = f"{bundle.path}:{bundle.manifest.model_hash}"
    writer = _Writer(kind, bundle.apis[api].column_names)
    resume = _Resume(output_path, _key(input_path, api, target), len(inputs))
    start = resume.open(writer.header())
    try:
        meter = _Meter(len(inputs), start)
        if start:
            logger.info("%d of %d rows were done before: going on from there", start, len(inputs))
        report(meter.progress(start, "computing"))
        if start < len(inputs) and dask is not None:
            _compute_on_dask(
                dask, bundle, api, inputs, start, size, writer, resume, meter, report, stop, workers
            )
        elif start < len(inputs):
            asyncio.run(
                _compute(bundle, settings, api, inputs, writer, resume, meter, report, stop)
            )
        if int(resume.state["rows_done"]) < len(inputs):
            raise _interrupted(resume)
        failed = int(resume.state["failed"])
        resume.finish(writer.footer())
    finally:
        resume.close()
    return BatchSummary(output=output_path, total=len(inputs), failed=failed, resumed=start)


async def _compute(
    bundle: Any,
    settings: Any,
    api: str,
    inputs: list[str],
    writer: _Writer,
    resume: _Resume,
    meter: _Meter,
    report: Callable[[Progress], object],
    stop: Callable[[], bool],
) -> None:
    """The inputs not yet written, as a job of the server's job manager in a store beside the
    output, through the model's engine; its chunks are written in order as they are recorded.

    Once ``stop`` says yes, no chunk is started; those in flight are finished, recorded and
    written, and the rest is left to a rerun (it follows the same job).
    """
    from ersilia_pack.runtime.engine.service import ModelService
    from ersilia_pack.runtime.jobs.manager import JobManager
    from ersilia_pack.runtime.predictor import Predictor
    from ersilia_pack.runtime.state.sqlite_store import SqliteStore

    store = SqliteStore(resume.jobs)
    service = ModelService(bundle, settings)
    # Nothing else uses this engine: the job's chunks take every slot, as requests would.
    jobs = JobManager(store, Predictor(service), settings, background=False)
    try:
        await service.start()
        job = await _local_job(jobs, resume, api, inputs)
        await jobs.start()
        await _write_job(jobs, job, bundle, inputs, writer, resume, meter, report, stop)
    finally:
        await jobs.stop()
        await service.stop()
        store.close()


async def _local_job(jobs: Any, resume: _Resume, api: str, inputs: list[str]) -> Any:
    """The job an earlier run left in the store, when it is still the one for the rows left;
    else a new job of the inputs not yet written."""
    from ersilia_pack.runtime.state.store import ACTIVE_STATES, DONE

    done = int(resume.state["rows_done"])
    earlier = resume.state.get("job_id")
    if earlier:
        offset = int(resume.state.get("job_offset") or 0)
        job = await jobs.get(str(earlier), owner="")
        fits = job is not None and job.api == api and offset + job.total == len(inputs)
        if fits and offset <= done and job.state in (*ACTIVE_STATES, DONE):
            logger.info("following job %s of an earlier run (%s)", job.id, job.state)
            return job
        if job is not None:
            await jobs.cancel(job.id, owner="")
    job = await jobs.submit(api, inputs[done:], owner="")
    resume.state.update(job_id=job.id, job_offset=done)
    resume.save()
    return job


async def _write_job(
    jobs: Any,
    job: Any,
    bundle: Any,
    inputs: list[str],
    writer: _Writer,
    resume: _Resume,
    meter: _Meter,
    report: Callable[[Progress], object],
    stop: Callable[[], bool],
) -> None:
    """The job's chunks from the first one not written, each once it is recorded."""
    from ersilia_pack.runtime.state.store import ACTIVE_STATES, DONE

    offset = int(resume.state["job_offset"])
    chunk = (int(resume.state["rows_done"]) - offset) // job.chunk_size
    stopping = False
    while chunk < job.chunks:
        result = await asyncio.to_thread(jobs.store.read_chunk, job.id, chunk)
        if result is not None:
            first = offset + chunk * job.chunk_size
            values = inputs[first : first + len(result.rows)]
            rows = [None if i in result.errors else row for i, row in enumerate(result.rows)]
            resume.record_rows(writer, values, rows, len(result.errors))
            report(meter.progress(resume.done, "computing"))
            chunk += 1
            continue
        if stopping:  # every chunk that was in flight is written
            return
        if stop():
            await jobs.stop(finish_running=True)
            stopping = True
            continue
        current = await jobs.get(job.id, owner="")
        if current is not None and current.state == DONE:
            continue  # its last chunk was recorded since the look above
        if current is None or current.state not in ACTIVE_STATES:
            raise _job_failed(jobs, job, current, bundle, resume)
        await jobs.chunk_ended(LOOK_SECONDS)


def _job_failed(jobs: Any, job: Any, now: Any, bundle: Any, resume: _Resume) -> BatchError:
    """Why the local job stopped (``now``: the job as the store has it now, None if gone)."""
    failed_here = jobs.last_failure
    if failed_here is not None and failed_here[0] == job.id:  # the model no longer answers
        failure = failed_here[1]
        why = f"failed ({failure.status_code}): {failure.detail}"
    elif now is None:
        why = f"lost its job {job.id} (removed from {resume.jobs.name})"
    else:
        why = f"failed: {now.error or now.state}"
    return BatchError(f"{job.api} of {bundle.manifest.model_id} {why}{resume.kept()}")


def _compute_on_dask(
    address: str,
    bundle: Any,
    api: str,
    inputs: list[str],
    start: int,
    size: int,
    writer: _Writer,
    resume: _Resume,
    meter: _Meter,
    report: Callable[[Progress], object],
    stop: Callable[[], bool],
    workers: int | None,
) -> None:
    """Chunks from ``start`` on the Dask cluster at ``address``, recorded in order."""
    if importlib.util.find_spec("distributed") is None:
        raise BatchError("--dask needs the distributed package: pip install 'ersilia-pack[dask]'")
    from ersilia_pack.dask_run import ChunkRows, compute_on_dask

    chunks = [inputs[i : i + size] for i in range(start, len(inputs), size)]

    def record(index: int, computed: ChunkRows) -> None:
        if computed.error is not None:
            status, detail = computed.error
            raise BatchError(
                f"{api} of {bundle.manifest.model_id} failed ({status}): {detail}{resume.kept()}"
            )
        resume.record_rows(writer, chunks[index], computed.rows, computed.failed)
        report(meter.progress(resume.done, "computing"))

    compute_on_dask(
        address=address,
        bundle_dir=bundle.path,
        model_hash=bundle.manifest.model_hash,
        api=api,
        chunks=chunks,
        first=0,
        workers=workers,
        record=record,
        stop=stop,
    )


# --url: a job on a served model


class _Stop(Exception):
    """Raised from the job's progress callback to stop waiting."""


def _run_remote(
    url: str,
    api: str,
    api_key: str | None,
    inputs: list[str],
    input_path: Path,
    output_path: Path,
    kind: str,
    report: Callable[[Progress], object],
    stop: Callable[[], bool],
    chunk_size: int | None,
) -> BatchSummary:
    with Client(url, api_key=api_key) as client:
        apis = client.apis()
        if api not in apis:
            raise InputFileError(
                f"api {api!r} is not an API of {url}: use one of {', '.join(apis)}"
            )
        writer = _Writer(kind, client.columns(api))
        header = writer.header()
        resume = _Resume(output_path, _key(input_path, api, client.url), len(inputs))
        start = resume.open(header)
        try:
            job = _attach(client, resume, api, len(inputs))
            if job is None:
                if start:
                    resume.restart_download(len(header))
                job = client.submit(inputs, api=api)
                resume.state["job_id"] = job.id
                resume.save()
                logger.info("submitted job %s (%d inputs) to %s", job.id, len(inputs), client.url)
            meters: list[_Meter] = []

            def follow(status: Any) -> None:
                if not meters:  # rates count the rows done while this run follows the job
                    meters.append(_Meter(len(inputs), status.done))
                # the server computes the job: its rows done are the progress
                queued = status.state == "queued" and not status.done
                stage = "waiting for the job to start" if queued else "computing"
                report(meters[0].progress(status.done, stage))
                if stop():
                    raise _Stop

            try:
                job.wait(progress=follow)
            except _Stop:
                raise _interrupted(resume, on_server=True) from None
            except TimeoutError as error:  # the job made no progress for the client's bound
                raise BatchError(str(error)) from error
            _download(job, inputs, writer, resume, report, stop, chunk_size or DOWNLOAD_CHUNK)
            failed = int(resume.state["failed"])
            resume.finish(writer.footer())
        finally:
            resume.close()
    return BatchSummary(
        output=output_path, total=len(inputs), failed=failed, resumed=start, job_id=job.id
    )


def _attach(client: Client, resume: _Resume, api: str, total: int) -> Job | None:
    """The job an earlier run submitted, when the server still has it as it was."""
    job_id = resume.state.get("job_id")
    if not job_id:
        return None
    job = client.job(str(job_id))
    try:
        status = job.status()
    except NotFound:
        logger.warning("job %s is gone from the server (expired?): submitting again", job_id)
        return None
    if status.api != api or status.total != total or status.state in ("failed", "cancelled"):
        logger.warning("job %s is %s: submitting again", job_id, status.state)
        return None
    logger.info("following job %s from an earlier run (%s)", job_id, status.state)
    return job


def _download(
    job: Job,
    inputs: list[str],
    writer: _Writer,
    resume: _Resume,
    report: Callable[[Progress], object],
    stop: Callable[[], bool],
    size: int,
) -> None:
    """The job's rows into the partial file, after those an earlier download wrote."""
    start = int(resume.state["rows_done"])
    meter = _Meter(len(inputs), start)
    position = 0
    batch: list[dict[str, Any] | None] = []

    def flush() -> None:
        chunk = inputs[resume.done : resume.done + len(batch)]
        cells = [
            [row.get(name) for name in writer.columns] if row is not None else None for row in batch
        ]
        resume.record_rows(writer, chunk, cells, sum(row is None for row in batch))
        batch.clear()
        report(meter.progress(resume.done, "downloading"))

    for row in job.iter_result():
        position += 1
        if position <= start:
            continue
        batch.append(row)
        if len(batch) >= size:
            flush()
            if stop():
                raise _interrupted(resume, on_server=True)
    if batch:
        flush()
    if int(resume.state["rows_done"]) != len(inputs):
        raise BatchError(
            f"job {job.id} gave {resume.state['rows_done']} rows for {len(inputs)} inputs"
        )
