"""A Python client of a served model: run inputs, submit jobs, follow them, fetch their rows.

```python
from ersilia_pack.client import Client

with Client("http://127.0.0.1:8000") as client:
    rows = client.run(["CCO", "not a molecule"])   # one dict per input, None for a failed row
    rows.errors                                    # {1: "the reason row 1 is null"}
    job = client.submit(library)                   # a big run, as a job on the server
    job.wait(progress=lambda status: print(status.done, "of", status.total))
    rows = job.result()                            # streamed from the server
```

Calls go through httpx. Connection errors and 502/503/504 answers are retried with a
doubling back-off, a bounded number of times; what still fails is raised as one of the errors
below, each saying what failed (the call, the status, the server's detail).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import httpx

from ersilia_pack import __version__
from ersilia_pack.errors import ErsiliaPackError

logger = logging.getLogger("ersilia_pack.client")

DEFAULT_TIMEOUT = 600.0
DEFAULT_BATCH = 10_000
DEFAULT_RETRIES = 5
DEFAULT_BACKOFF = 0.5
MAX_BACKOFF = 8.0
RETRY_STATUSES = (502, 503, 504)
# A job that makes no progress for this long is given up on (a job whose model version is no
# longer served, or a server that no longer works on it, would be waited for for ever).
DEFAULT_STALL = 3600.0
NULL_ROW = "null row: the model gave no values for this input"
# Errors that mean the request never reached the server: safe to retry even for a submit.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)
# Errors after which a call that changes nothing (a read, a prediction) is safe to repeat.
_RETRYABLE = (*_NOT_SENT, httpx.ReadError, httpx.WriteError, httpx.RemoteProtocolError)


class ClientError(ErsiliaPackError):
    """A call to a served model failed; ``status`` and ``detail`` say how (None: no answer)."""

    exit_code = 4

    def __init__(self, message: str, *, status: int | None = None, detail: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.detail = detail


class ConnectionFailed(ClientError):
    """The server could not be reached (or dropped the connection), even after retries."""


class AuthError(ClientError):
    """The server wants an API key (401) and none, or a wrong one, was given."""

    exit_code = 1


class RequestError(ClientError):
    """The server refused the request as sent: bad inputs, over a limit, an unknown API."""

    exit_code = 1


class NotFound(ClientError):
    """No such route, API or job (a job may have expired, or belong to another key)."""


class ModelError(ClientError):
    """The model failed (502), ran out of time (504), or the server could not answer (5xx)."""


class JobError(ClientError):
    """A job failed or was cancelled, so it has no result."""


class MissingDependency(ClientError):
    """An optional package (pandas) is needed for what was asked and is not installed."""

    exit_code = 1


def _detail_text(detail: Any) -> str:
    if isinstance(detail, list):  # FastAPI's validation problems
        parts = [
            f"{'.'.join(map(str, item.get('loc', [])))}: {item.get('msg', '')}"
            if isinstance(item, dict)
            else str(item)
            for item in detail
        ]
        return "; ".join(parts)
    return str(detail)


def _error_for(call: str, response: httpx.Response) -> ClientError:
    """The client's error for a non-2xx answer, naming the call, the status and the detail."""
    status = response.status_code
    try:
        body = response.json()
        detail = body.get("detail", body) if isinstance(body, dict) else body
    except ValueError:
        detail = response.text.strip()[:500] or response.reason_phrase
    text = _detail_text(detail)
    message = f"{call} answered {status}: {text}"
    if status == 401:
        return AuthError(
            f"{message} (pass the server's key: Client(url, api_key=KEY))",
            status=status,
            detail=detail,
        )
    if status == 404:
        return NotFound(message, status=status, detail=detail)
    if status in (502, 504) or status >= 500:
        kind = {
            502: "the model failed",
            503: "the server cannot answer now",
            504: "the model ran out of time",
        }.get(status, "the server failed")
        return ModelError(f"{call}: {kind} ({status}): {text}", status=status, detail=detail)
    if status == 409:
        return JobError(message, status=status, detail=detail)
    return RequestError(message, status=status, detail=detail)


class Results(list[dict[str, Any] | None]):
    """One row per input, in input order: a dict by column name, or None for a failed row.

    ``errors`` maps the position of each failed row to its reason; ``columns`` names the
    output columns; ``inputs`` are the inputs the rows belong to (None for the result of a job
    this client did not submit).
    """

    def __init__(
        self,
        rows: Iterable[dict[str, Any] | None],
        *,
        inputs: Sequence[str] | None,
        columns: Sequence[str],
        errors: dict[int, str] | None = None,
    ) -> None:
        super().__init__(rows)
        self.inputs = list(inputs) if inputs is not None else None
        self.columns = list(columns)
        self.errors: dict[int, str] = dict(errors or {})

    @property
    def reasons(self) -> list[str | None]:
        """Per row, why it is null (None for a row with values)."""
        return [self.errors.get(i) for i in range(len(self))]

    def to_pandas(self) -> Any:
        """A pandas DataFrame: the ``input`` column (when known), then the output columns, one
        row per input (NaN or None for the values of a failed row)."""
        pandas = _pandas()
        data: dict[str, list[Any]] = {} if self.inputs is None else {"input": self.inputs}
        for name in self.columns:
            data[name] = [row.get(name) if row is not None else None for row in self]
        return pandas.DataFrame(data, columns=list(data))


def _pandas() -> Any:
    try:
        import pandas
    except ImportError as error:
        raise MissingDependency(
            "pandas is not installed, so results cannot be a DataFrame: pip install pandas "
            "(or leave as_frame out to get a list of dicts)"
        ) from error
    return pandas


def _is_null(row: dict[str, Any] | None) -> bool:
    return row is None or all(value is None for value in row.values())


def _records(chunks: Iterable[str]) -> Iterator[dict[str, Any]]:
    """The objects of a JSON array of objects, parsed as its text arrives."""
    decoder = json.JSONDecoder()
    buffer, started, finished = "", False, False
    for text in chunks:
        buffer += text
        position = 0
        while True:
            while position < len(buffer) and buffer[position] in " \t\r\n,":
                position += 1
            if position >= len(buffer):
                break
            if not started:
                if buffer[position] != "[":
                    raise ValueError(f"not a JSON array: starts with {buffer[position]!r}")
                started = True
                position += 1
                continue
            if buffer[position] == "]":
                finished = True
                position += 1
                break
            try:
                item, position = decoder.raw_decode(buffer, position)
            except json.JSONDecodeError:
                break  # an object cut in two: wait for the rest of it
            if not isinstance(item, dict):
                raise ValueError(f"a row is not a JSON object: {str(item)[:60]}")
            yield item
        buffer = buffer[position:]
        if finished:
            break
    if not finished:
        raise ValueError("the answer ended before the end of its JSON array")


@dataclass(frozen=True)
class JobStatus:
    """What ``GET /job/status/{id}`` says of a job."""

    job_id: str
    api: str
    state: str
    done: int
    total: int
    null_rows: int = 0
    cached_rows: int = 0
    computed_rows: int = 0
    error: str | None = None
    raw: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")

    @classmethod
    def from_json(cls, body: dict[str, Any]) -> JobStatus:
        return cls(
            job_id=str(body["job_id"]),
            api=str(body.get("api", "")),
            state=str(body["state"]),
            done=int(body.get("done", 0)),
            total=int(body.get("total", 0)),
            null_rows=int(body.get("null_rows", 0)),
            cached_rows=int(body.get("cached_rows", 0)),
            computed_rows=int(body.get("computed_rows", 0)),
            error=body.get("error"),
            raw=body,
        )


class Client:
    """A served model at ``url`` (``http://HOST:PORT``, with any root path).

    ``api_key`` is sent as a bearer token; ``timeout`` bounds each HTTP call (seconds);
    ``retries`` is how many times a call is tried in all on a connection error or a
    502/503/504 answer, waiting ``backoff`` seconds before the second try and twice as long
    before each next one (at most 8 s); ``batch_size`` is the most inputs ``run`` sends in one
    request (it halves the batch when the server says 413).
    """

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        timeout: float = DEFAULT_TIMEOUT,
        *,
        retries: int = DEFAULT_RETRIES,
        backoff: float = DEFAULT_BACKOFF,
        batch_size: int = DEFAULT_BATCH,
    ) -> None:
        if retries < 1:
            raise ValueError("retries counts every try, the first included: give 1 or more")
        if batch_size < 1:
            raise ValueError("batch_size must be 1 or more")
        self.url = url.rstrip("/")
        self.retries = retries
        self.backoff = backoff
        self.batch_size = batch_size
        headers = {"User-Agent": f"ersilia_pack.client/{__version__}"}
        if api_key:
            headers["Authorization"] = f"Bearer {api_key}"
        self._http = httpx.Client(base_url=self.url, headers=headers, timeout=timeout)
        self._columns: dict[str, list[str]] = {}

    def __enter__(self) -> Client:
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the connections."""
        self._http.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    # HTTP with retries

    def _pause(self, attempt: int) -> float:
        return float(min(self.backoff * 2**attempt, MAX_BACKOFF))

    def _send(
        self,
        method: str,
        path: str,
        *,
        safe: bool = True,
        stream: bool = False,
        **kwargs: Any,
    ) -> httpx.Response:
        """Send a request, retrying (bounded) on connection errors and 502/503/504.

        ``safe=False`` (a submit) retries only errors that mean the request was never sent,
        and 503 (not taken), so one call never makes two jobs. Answers other than 2xx raise
        the client's errors. With ``stream`` the caller reads (and closes) the answer's body.
        """
        call = f"{method} {self.url}{path}"
        retryable = _RETRYABLE if safe else _NOT_SENT
        statuses = RETRY_STATUSES if safe else (503,)
        for attempt in range(self.retries):
            last = attempt == self.retries - 1
            try:
                request = self._http.build_request(method, path, **kwargs)
                response = self._http.send(request, stream=stream)
            except retryable as error:
                if last:
                    raise ConnectionFailed(
                        f"{call} failed after {self.retries} tries: {type(error).__name__}: "
                        f"{error or 'no answer'} (is the server running at {self.url}?)"
                    ) from error
                pause = self._pause(attempt)
                logger.info("%s: %s, trying again in %.1f s", call, type(error).__name__, pause)
                time.sleep(pause)
                continue
            except httpx.TimeoutException as error:
                raise ConnectionFailed(
                    f"{call} timed out ({type(error).__name__}): raise the client's timeout, "
                    "or submit a job for big runs"
                ) from error
            except httpx.HTTPError as error:
                raise ConnectionFailed(f"{call} failed: {type(error).__name__}: {error}") from error
            if response.status_code in statuses and not last:
                if stream:
                    response.read()
                    response.close()
                pause = self._pause(attempt)
                logger.info(
                    "%s answered %d, trying again in %.1f s", call, response.status_code, pause
                )
                time.sleep(pause)
                continue
            if response.is_success:
                return response
            if stream:
                response.read()
                response.close()
            raise _error_for(call, response)
        raise AssertionError("unreachable: the last try returns or raises")

    def _json(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self._send(method, path, **kwargs)
        try:
            return response.json()
        except ValueError as error:
            raise ClientError(
                f"{method} {self.url}{path} answered {response.status_code} with a body that "
                f"is not JSON: {response.text[:200]!r}",
                status=response.status_code,
            ) from error

    # the model

    def info(self) -> dict[str, Any]:
        """The model's information: id, slug, card, API list and schema (``GET /info``)."""
        body: dict[str, Any] = self._json("GET", "/info")
        return body

    def apis(self) -> list[str]:
        """The model's API names."""
        return [str(name) for name in self.info().get("api_list", [])]

    def columns(self, api: str = "run") -> list[str]:
        """The output column names of an API, in order."""
        if api not in self._columns:
            body = self._json("GET", f"/{api}/columns/output")
            self._columns[api] = [str(column["name"]) for column in body]
        return self._columns[api]

    def ready(self) -> bool:
        """Whether every API can answer now (``GET /readyz``); False when unreachable."""
        try:
            response = self._http.get("/readyz")
        except httpx.HTTPError:
            return False
        return response.status_code == 200

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Wait (at most ``timeout`` seconds) until every API can answer; ClientError if not."""
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() > deadline:
                raise ClientError(f"{self.url} is not ready after {timeout:g} s (GET /readyz)")
            time.sleep(0.2)

    def run(
        self,
        inputs: Iterable[str],
        api: str = "run",
        *,
        as_frame: bool = False,
        batch_size: int | None = None,
    ) -> Any:
        """Run inputs through an API: a ``Results`` list, one row per input, in order.

        A failed row is None and its reason is in ``results.errors``. Big lists go in batches
        of ``batch_size`` (the client's by default). ``as_frame=True`` gives a pandas
        DataFrame instead (an ``input`` column first; needs pandas).
        """
        values = _as_inputs(inputs)
        if as_frame:
            _pandas()  # before any work: fail fast when pandas is missing
        size = batch_size or self.batch_size
        rows: list[dict[str, Any] | None] = []
        errors: dict[int, str] = {}
        columns: list[str] | None = None
        start = 0
        while start < len(values):
            batch = values[start : start + size]
            try:
                body = self._json("POST", f"/{api}", params={"with_meta": "true"}, json=batch)
            except RequestError as error:
                if error.status == 413 and len(batch) > 1:
                    size = max(1, len(batch) // 2)
                    logger.info(
                        "%d inputs are over the server's limit: batches of %d", len(batch), size
                    )
                    continue
                raise
            result, failed = body["result"], body["meta"]["failed"]
            if len(result) != len(batch):
                raise ClientError(
                    f"POST {self.url}/{api} answered {len(result)} rows for {len(batch)} inputs"
                )
            reasons = {int(item["index"]): str(item["reason"]) for item in failed}
            for i, row in enumerate(result):
                if columns is None:
                    columns = list(row)
                if i in reasons:
                    errors[start + i] = reasons[i]
                    rows.append(None)
                else:
                    rows.append(row)
            start += len(batch)
        if columns is None:
            columns = self.columns(api)
        results = Results(rows, inputs=values, columns=columns, errors=errors)
        return results.to_pandas() if as_frame else results

    # jobs

    def submit(self, inputs: Iterable[str], api: str = "run") -> Job:
        """Submit inputs as a job (``POST /job/submit``); the job, to follow and fetch."""
        values = _as_inputs(inputs)
        if not values:
            raise RequestError("a job needs at least one input")
        body = self._json("POST", "/job/submit", params={"api": api}, json=values, safe=False)
        return Job(self, str(body["job_id"]), api=api, inputs=values)

    def job(self, job_id: str) -> Job:
        """A job submitted before (by this client or another): to follow and fetch."""
        return Job(self, job_id)


def _as_inputs(inputs: Iterable[str]) -> list[str]:
    if isinstance(inputs, str):
        raise TypeError("inputs must be a list of strings, not one string: use [text]")
    values = list(inputs)
    wrong = next((value for value in values if not isinstance(value, str)), None)
    if wrong is not None:
        raise TypeError(f"inputs must be strings: got {type(wrong).__name__} {wrong!r}")
    return values


class Job:
    """A job on the server: ``status()``, ``wait()``, ``result()``, ``cancel()``."""

    def __init__(
        self,
        client: Client,
        job_id: str,
        *,
        api: str | None = None,
        inputs: list[str] | None = None,
    ) -> None:
        self.client = client
        self.id = job_id
        self.api = api
        self.inputs = inputs

    def __repr__(self) -> str:
        return f"Job({self.id!r})"

    def status(self) -> JobStatus:
        """The job's state and progress."""
        status = JobStatus.from_json(self.client._json("GET", f"/job/status/{self.id}"))
        self.api = status.api or self.api
        return status

    def wait(
        self,
        progress: Callable[[JobStatus], object] | None = None,
        *,
        poll: float = 1.0,
        timeout: float | None = None,
        outage: float = 300.0,
        stall: float | None = DEFAULT_STALL,
    ) -> JobStatus:
        """Wait until the job is done; its final status.

        ``progress`` is called with each status polled (every ``poll`` seconds at most); an
        exception it raises stops the wait. A server that cannot be reached (restarting, say)
        is polled again until it answers, for up to ``outage`` seconds in a row. Raises
        JobError when the job failed or was cancelled, TimeoutError after ``timeout`` seconds
        in all, or when the job made no progress (no chunk recorded, no change of state) for
        ``stall`` seconds (an hour; None waits for ever).
        """
        started = time.monotonic()
        reached = started
        moved, last = started, None
        pause = min(poll, 0.1)
        while True:
            try:
                status = self.status()
            except (ConnectionFailed, ModelError) as error:
                if isinstance(error, ModelError) and error.status not in RETRY_STATUSES:
                    raise
                if time.monotonic() - reached > outage:
                    raise
                logger.info("job %s: server unreachable (%s), polling again", self.id, error)
                time.sleep(poll)
                continue
            reached = time.monotonic()
            mark = (status.state, status.done, status.raw.get("chunks_processed"))
            if mark != last:
                moved, last = reached, mark
            if progress is not None:
                progress(status)
            if status.state == "done":
                return status
            if status.state == "failed":
                raise JobError(
                    f"job {self.id} failed: {status.error or 'no reason given'}", detail=status.raw
                )
            if status.state == "cancelled":
                raise JobError(
                    f"job {self.id} was cancelled, so it has no result", detail=status.raw
                )
            if timeout is not None and time.monotonic() - started > timeout:
                raise TimeoutError(
                    f"job {self.id} is still {status.state} after {timeout:g} s "
                    f"({status.done} of {status.total} rows done): wait longer "
                    "(a bigger timeout), or follow it later with client.job(job_id).wait()"
                )
            if stall is not None and time.monotonic() - moved > stall:
                raise TimeoutError(
                    f"job {self.id} made no progress for {stall:g} s: it is still "
                    f"{status.state} ({status.done} of {status.total} rows done). Check that a "
                    f"server of the model version that made it still runs (GET /readyz, the "
                    f"servers' logs); to keep waiting, follow it again (client.job(job_id)"
                    f".wait(), or run the same ersilia_pack run command) with a longer stall; "
                    "to start over, cancel it and submit the inputs again"
                )
            time.sleep(pause)
            pause = min(poll, pause * 2)

    def iter_result(self) -> Iterator[dict[str, Any] | None]:
        """The rows of a done job, in input order, as the server streams them (None: null).

        A connection lost mid-way is opened again (bounded) and goes on from the next row.
        """
        path = f"/job/result/{self.id}"
        given = 0
        for attempt in range(self.client.retries):
            response = self.client._send("GET", path, params={"orient": "records"}, stream=True)
            try:
                for position, row in enumerate(_records(response.iter_text())):
                    if position < given:
                        continue
                    given += 1
                    yield None if _is_null(row) else row
                return
            except _RETRYABLE as error:
                if attempt == self.client.retries - 1:
                    raise ConnectionFailed(
                        f"GET {self.client.url}{path} broke off after {given} rows: {error}"
                    ) from error
                logger.info("GET %s broke off after %d rows: trying again", path, given)
                time.sleep(self.client._pause(attempt))
            except ValueError as error:
                raise ClientError(f"GET {self.client.url}{path}: {error}") from error
            finally:
                response.close()

    def result(self, *, as_frame: bool = False) -> Any:
        """The rows of the job (waiting for it first): a ``Results`` list, or a DataFrame."""
        if as_frame:
            _pandas()
        status = self.wait()
        rows = list(self.iter_result())
        if len(rows) != status.total:
            raise ClientError(f"job {self.id} gave {len(rows)} rows for {status.total} inputs")
        api = status.api or self.api or "run"
        errors = {i: NULL_ROW for i, row in enumerate(rows) if row is None}
        results = Results(rows, inputs=self.inputs, columns=self.client.columns(api), errors=errors)
        return results.to_pandas() if as_frame else results

    def cancel(self) -> str:
        """Cancel the job (or remove a finished one); the state the server answers."""
        body = self.client._json("DELETE", f"/job/{self.id}")
        return str(body.get("state", ""))
