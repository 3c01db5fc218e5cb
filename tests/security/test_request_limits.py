"""Limits and hostile bodies on a real server: each gets its own clear status and message.

The server takes its limits from ersilia_serve's flags (and one from its environment
variable), its key from ERSILIA_PACK_API_KEY and one CORS origin, as a container would.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from security_helpers import Server, processes_of, serve, wait_ready

KEY = f"limits-{secrets.token_hex(12)}"
AUTH = {"Authorization": f"Bearer {KEY}"}
ORIGIN = "https://lab.example.org"
MAX_BODY = 4096
MAX_INPUTS = 5
MAX_LENGTH = 50


@pytest.fixture(scope="module")
def server(faults_repository: Path) -> Iterator[Server]:
    with serve(
        faults_repository,
        *("--max-body-bytes", str(MAX_BODY), "--max-input-length", str(MAX_LENGTH)),
        *("--cors-origin", ORIGIN, "--workers", "1", "--no-self-check"),
        env={"ERSILIA_PACK_API_KEY": KEY, "ERSILIA_PACK_MAX_INPUTS": str(MAX_INPUTS)},
    ) as running:
        wait_ready(running.url)
        yield running


def post(server: Server, body: object, content_type: str = "application/json") -> httpx.Response:
    return httpx.post(
        f"{server.url}/ok",
        content=body,  # type: ignore[arg-type]
        headers={**AUTH, "Content-Type": content_type},
        timeout=60,
    )


def detail(response: httpx.Response, status: int) -> str:
    """The JSON detail of an error answer, after checking what every error answer carries."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-request-id"]
    text = response.json()["detail"]
    assert "Traceback" not in response.text
    return str(text)


def multipart(csv: bytes) -> tuple[bytes, str]:
    boundary = "ersilia-pack-test-boundary"
    body = (
        (
            f"--{boundary}\r\n"
            'Content-Disposition: form-data; name="file"; filename="inputs.csv"\r\n'
            "Content-Type: text/csv\r\n\r\n"
        ).encode()
        + csv
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"


def test_requests_within_the_limits_are_answered(server: Server) -> None:
    inputs = ["a" * MAX_LENGTH, "bb", "", "dddd", "é"]
    answer = post(server, json.dumps(inputs).encode())
    assert answer.status_code == 200, answer.text
    assert answer.json() == [{"length": len(value)} for value in inputs]
    body, content_type = multipart(b"input\nabc\nde\n")
    upload = post(server, body, content_type)
    assert upload.status_code == 200, upload.text
    assert upload.json() == [{"length": 3}, {"length": 2}]
    csv = post(server, b"smiles,other\nabc,1\r\nabcd,2\r\n", "text/csv")
    assert csv.json() == [{"length": 3}, {"length": 4}]


def test_a_body_over_the_limit_is_413_with_or_without_a_length(server: Server) -> None:
    big = b'["' + b"a" * (MAX_BODY + 10) + b'"]'
    assert str(MAX_BODY) in detail(post(server, big), 413)

    def chunks() -> Iterator[bytes]:  # chunked transfer: no Content-Length to trust
        yield b'["a"'
        for _ in range(MAX_BODY // 6 + 10):
            yield b',"bcd"'
        yield b"]"

    assert str(MAX_BODY) in detail(post(server, chunks()), 413)


def test_a_huge_multipart_upload_is_413(server: Server) -> None:
    body, content_type = multipart(b"input\n" + b"CCO\n" * 50_000)
    assert str(MAX_BODY) in detail(post(server, body, content_type), 413)

    def chunks() -> Iterator[bytes]:
        for start in range(0, len(body), 1000):
            yield body[start : start + 1000]

    assert str(MAX_BODY) in detail(post(server, chunks(), content_type), 413)


def test_too_many_inputs_is_413_naming_the_limit_and_the_job_api(server: Server) -> None:
    text = detail(post(server, b'["a", "b", "c", "d", "e", "f"]'), 413)
    assert f"limit of {MAX_INPUTS}" in text
    assert "/job/submit" in text
    csv = detail(post(server, b"input\n" + b"x\n" * (MAX_INPUTS + 1), "text/csv"), 413)
    assert f"limit of {MAX_INPUTS}" in csv


def test_an_input_over_the_length_limit_is_422(server: Server) -> None:
    text = detail(post(server, b'["ok", "' + b"a" * (MAX_LENGTH + 1) + b'"]'), 422)
    assert "input 1" in text and f"limit is {MAX_LENGTH}" in text


def test_an_unsupported_content_type_is_415(server: Server) -> None:
    for content_type in ("application/xml", "image/png", "application/octet-stream"):
        assert "not supported" in detail(post(server, b"<a/>", content_type), 415)


@pytest.mark.parametrize(
    ("body", "content_type", "status", "words"),
    [
        (b"not json", "application/json", 400, "not valid JSON"),
        (b"[" * 3000, "application/json", 400, "nested too deeply"),
        (b'{"input": "abc"}', "application/json", 422, "must be a JSON list"),
        (b"[]", "application/json", 422, "empty list"),
        (b"[1, 2]", "application/json", 422, "item 0"),
        (b'[{"key": "1"}]', "application/json", 422, "item 0"),
        (b'["ok", "\\ud800"]', "application/json", 422, "lone surrogate"),
        (b'"\xff\xfe', "application/json", 400, "not valid JSON"),
        (b"", "application/json", 422, "empty"),
        (b"input\n", "text/csv", 422, "no inputs"),
        (b"input\n" + b"a" * 200_000, "text/csv", 413, str(MAX_BODY)),
        (
            b"--b\r\n\r\nx\r\n--b\r\n\r\ny\r\n--b--\r\n",  # two parts, neither a file
            "multipart/form-data; boundary=b",
            422,
            "no file",
        ),
        (b"--b\r\n\r\n", "multipart/form-data", 400, "could not be read"),
    ],
)
def test_hostile_bodies_get_a_clear_4xx(
    server: Server, body: bytes, content_type: str, status: int, words: str
) -> None:
    assert words in detail(post(server, body, content_type), status)


def test_the_server_answers_normally_after_hostile_requests(server: Server) -> None:
    answer = post(server, b'["abc"]')
    assert answer.status_code == 200
    assert answer.json() == [{"length": 3}]


def test_cors_allows_only_the_given_origin(server: Server) -> None:
    allowed = httpx.post(
        f"{server.url}/ok", json=["abc"], headers={**AUTH, "Origin": ORIGIN}, timeout=30
    )
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == ORIGIN
    other = httpx.post(
        f"{server.url}/ok",
        json=["abc"],
        headers={**AUTH, "Origin": "https://elsewhere.example.com"},
        timeout=30,
    )
    assert "access-control-allow-origin" not in other.headers
    # A browser's preflight carries no key and must pass; the refusal that may follow is
    # readable by the page, so it carries the CORS header too.
    preflight = httpx.options(
        f"{server.url}/ok",
        headers={
            "Origin": ORIGIN,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
        timeout=30,
    )
    assert preflight.status_code == 200
    assert preflight.headers["access-control-allow-origin"] == ORIGIN
    refused = httpx.post(f"{server.url}/ok", json=["abc"], headers={"Origin": ORIGIN}, timeout=30)
    assert refused.status_code == 401
    assert refused.headers["access-control-allow-origin"] == ORIGIN


def test_the_key_from_the_environment_is_required(server: Server) -> None:
    assert httpx.post(f"{server.url}/ok", json=["abc"], timeout=30).status_code == 401
    assert KEY not in server.log


def test_model_processes_do_not_inherit_the_key(server: Server) -> None:
    workers = [pid for pid, cmdline in processes_of(server).items() if "app/worker.py" in cmdline]
    assert workers
    for pid in workers:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        assert not [item for item in environ if item.startswith(b"ERSILIA_PACK_API_KEY=")]
        # none of the server's settings: a store URL would carry its password
        assert not [item for item in environ if item.startswith(b"ERSILIA_PACK_")]
        assert not [item for item in environ if KEY.encode() in item]
    assert f"ERSILIA_PACK_API_KEY={KEY}".encode() in Path(
        f"/proc/{server.pid}/environ"
    ).read_bytes().split(b"\0")
