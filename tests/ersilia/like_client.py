"""Drive ersilia-pack the way the Ersilia client does: console scripts, the uvicorn line, and
HTTP requests with the exact bytes ``requests.post(url, json=...)`` sends.

Also an oracle for the fixtures' example outputs that reads their CSV files without using any
ersilia_pack code, so a bug in the package's own readers cannot hide a wrong answer.
"""

from __future__ import annotations

import contextlib
import csv
import gzip
import http.client
import json
import os
import re
import subprocess
import urllib.parse
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from helpers import server_process

UVICORN_LINE = re.compile(r"Uvicorn running on (http://\S+) \(Press CTRL\+C to quit\)")
# What requests 2.x sends besides the body headers; the Ersilia client uses requests.
REQUESTS_HEADERS = {
    "User-Agent": "python-requests/2.32.3",
    "Accept-Encoding": "gzip, deflate",
    "Accept": "*/*",
    "Connection": "keep-alive",
}
NO_BODY = object()


def run_script(
    script: str | Path, *args: str | Path, env: Mapping[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a console script to the end, as the client's ``run_command`` does."""
    return subprocess.run(
        [str(script), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, **(env or {})},
        stdin=subprocess.DEVNULL,
        check=False,
    )


@contextlib.contextmanager
def serving(
    script: str | Path, *args: str | Path, env: Mapping[str, str] | None = None
) -> Iterator[str]:
    """Start a server command (e.g. ``ersilia_model_serve --bundle_path P --port 0``); yield the
    URL from its uvicorn line, which must read exactly as the client expects it; kill its
    process group at the end."""
    argv = [str(script), *map(str, args)]
    with server_process(argv, env=env, ready_line=UVICORN_LINE) as url:
        yield url


@dataclass
class Reply:
    """An HTTP answer: status, headers (lower-case names) and body bytes."""

    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def call(base_url: str, method: str, path: str, payload: Any = NO_BODY) -> Reply:
    """One request; ``payload`` is sent as ``requests``' ``json=`` sends it."""
    url = urllib.parse.urlsplit(base_url)
    assert url.hostname is not None
    connection = http.client.HTTPConnection(url.hostname, url.port, timeout=120)
    headers = dict(REQUESTS_HEADERS)
    body = None
    if payload is not NO_BODY:
        body = json.dumps(payload, allow_nan=False).encode("utf-8")
        headers["Content-Length"] = str(len(body))
        headers["Content-Type"] = "application/json"
    try:
        connection.request(method, url.path.rstrip("/") + path, body=body, headers=headers)
        response = connection.getresponse()
        data = response.read()
        reply_headers = {name.lower(): value for name, value in response.getheaders()}
    finally:
        connection.close()
    if reply_headers.get("content-encoding") == "gzip":
        data = gzip.decompress(data)
    return Reply(response.status, reply_headers, data)


def read_csv(path: Path) -> list[list[str]]:
    with path.open(newline="", encoding="utf-8") as handle:
        return [row for row in csv.reader(handle) if row]


def example_inputs(framework: Path) -> list[str]:
    """The inputs of ``examples/run_input.csv`` (one column, any header)."""
    return [row[0] for row in read_csv(framework / "examples" / "run_input.csv")[1:]]


def expected_records(framework: Path) -> list[dict[str, Any]]:
    """``examples/run_output.csv`` as the client must receive it: one dict per row, keys in
    ``run_columns.csv`` order, values typed per column; an empty or ``nan`` number is None,
    and a string is the string the model wrote, an empty one included."""
    columns = [(row[0], row[1]) for row in read_csv(framework / "columns" / "run_columns.csv")[1:]]
    header, *rows = read_csv(framework / "examples" / "run_output.csv")
    records = []
    for row in rows:
        record: dict[str, Any] = {}
        for name, kind in columns:
            raw = row[header.index(name)]
            if kind == "string":
                record[name] = raw
            elif raw in ("", "nan"):
                record[name] = None
            elif kind == "float":
                record[name] = float(raw)
            elif kind == "integer":
                record[name] = int(raw)
            else:
                record[name] = raw
        records.append(record)
    return records
