"""OpenAPI-driven fuzzing of a real server with schemathesis: for every operation the app
documents, generated requests (valid and invalid) never get a 5xx, and every answer matches
what the document promises (status codes, content types, headers, bodies, the bearer scheme).

One check is left out: positive_data_acceptance, which expects any body the JSON schema
allows to be accepted. A CSV upload documented as a string or a binary file cannot say in
JSON Schema that it needs a header row and at least one input row, so the server rightly
answers some of them 422 with a reason.
"""

from __future__ import annotations

import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from security_helpers import Server, serve, wait_ready

KEY = f"fuzz-{secrets.token_hex(12)}"


@pytest.fixture(scope="module")
def server(demo_repository: Path) -> Iterator[Server]:
    with serve(demo_repository, "--api-key", KEY, "--workers", "2") as running:
        wait_ready(running.url)
        yield running


def schemathesis(server: Server, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable,
        "-m",
        "schemathesis.cli",
        "run",
        f"{server.url}/openapi.json",
        *("--checks", "all", "--exclude-checks", "positive_data_acceptance"),
        *("--max-examples", "50", "--request-timeout", "60", "--workers", "2"),
        *("--generation-database", "none", "--no-color", "--report-dir", str(tmp_path)),
        *args,
    ]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def test_generated_requests_get_no_5xx_and_match_the_schema(server: Server, tmp_path: Path) -> None:
    run = schemathesis(server, tmp_path, "--header", f"Authorization: Bearer {KEY}")
    report = run.stdout + run.stderr
    assert run.returncode == 0, report
    # It really ran: every documented API operation, and many generated requests.
    assert "/run" in server.log and "/esol" in server.log
    generated = next(line for line in report.splitlines() if " generated" in line)
    assert int(generated.split()[0]) >= 200, report
    assert " 500 " not in server.log and "Traceback" not in server.log
    assert KEY not in server.log
