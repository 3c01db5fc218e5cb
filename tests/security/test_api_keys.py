"""API keys on a real server: every protected route (taken from the app's own OpenAPI document,
job routes included when the app has them) refuses a caller without a key or with a wrong one,
public routes answer anyone, either configured key works, and no key ever reaches the logs."""

from __future__ import annotations

import re
import secrets
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from security_helpers import Server, serve, wait_ready

KEYS = (f"key-one-{secrets.token_hex(12)}", f"key-two-{secrets.token_hex(12)}")
WRONG = f"key-bad-{secrets.token_hex(12)}"
BEARER = {"Authorization": f"Bearer {KEYS[0]}"}
PUBLIC = (
    *("/", "/healthz", "/readyz", "/docs", "/redoc", "/openapi.json", "/static/swagger-ui.css"),
    *("/ui", "/ui/config", "/static/ui/ui.js"),
)
METHODS = ("get", "post", "put", "patch", "delete", "head")


@pytest.fixture(scope="module")
def server(demo_repository: Path) -> Iterator[Server]:
    # Verbose, so that even debug logging is shown to hold no key.
    with serve(demo_repository, "--api-key", ",".join(KEYS), "--workers", "1", "-v") as running:
        wait_ready(running.url)
        yield running


def operations(server: Server) -> list[tuple[str, str]]:
    schema = httpx.get(f"{server.url}/openapi.json", timeout=30).json()
    return [
        (method.upper(), path)
        for path, item in schema["paths"].items()
        for method in item
        if method in METHODS
    ]


def call(server: Server, method: str, path: str, key: str | None) -> httpx.Response:
    # Path parameters get a real card field where one is asked for, else a made-up id.
    url = server.url + re.sub(r"\{[^}]+\}", lambda m: "Title" if m[0] == "{field}" else "x", path)
    headers = {"Authorization": f"Bearer {key}"} if key is not None else {}
    body = b'["CCO"]' if method in ("POST", "PUT", "PATCH") else None
    if body is not None:
        headers["Content-Type"] = "application/json"
    return httpx.request(method, url, headers=headers, content=body, timeout=60)


def assert_refused(response: httpx.Response) -> None:
    assert response.status_code == 401, (response.request.url, response.text)
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.json()["detail"]
    assert response.headers["x-request-id"]


def test_every_protected_route_refuses_a_missing_or_wrong_key(server: Server) -> None:
    protected = [(m, p) for m, p in operations(server) if p not in PUBLIC]
    paths = {path for _, path in protected}
    # What every served model has; job routes join the list by themselves when they exist.
    assert {"/run", "/esol", "/info", "/card", "/card/{field}", "/run/example/input"} <= paths
    for method, path in protected:
        assert_refused(call(server, method, path, None))
        assert_refused(call(server, method, path, WRONG))
        assert_refused(call(server, method, path, KEYS[0] + "x"))


def test_either_key_opens_every_protected_route(server: Server) -> None:
    for method, path in operations(server):
        for key in KEYS:
            response = call(server, method, path, key)
            assert response.status_code not in (401, 403), (method, path, response.text)
            assert response.status_code < 500, (method, path, response.text)
    answer = call(server, "POST", "/run", KEYS[1])
    assert answer.status_code == 200
    assert answer.json()[0]["mol_weight"] == pytest.approx(46.069, rel=1e-6)


def test_public_routes_answer_without_a_key(server: Server) -> None:
    for path in PUBLIC:
        for key in (None, WRONG):
            response = call(server, "GET", path, key)
            assert response.status_code == 200, (path, response.text)
    assert call(server, "GET", "/", None).json() == {"eos-demo": "rdkit-descriptors-esol"}


def test_unknown_routes_are_refused_before_they_are_looked_up(server: Server) -> None:
    assert_refused(call(server, "GET", "/no/such/route", None))
    assert call(server, "GET", "/no/such/route", KEYS[0]).status_code == 404


def test_openapi_documents_the_bearer_scheme_where_it_applies(server: Server) -> None:
    schema = httpx.get(f"{server.url}/openapi.json", timeout=30).json()
    assert schema["components"]["securitySchemes"]["bearerAuth"] == {
        "type": "http",
        "scheme": "bearer",
        "description": "one of the keys given to ersilia_serve with --api-key",
    }
    for method, path in operations(server):
        operation = schema["paths"][path][method.lower()]
        if path in PUBLIC:
            assert "security" not in operation, path
        else:
            assert operation["security"] == [{"bearerAuth": []}], path
            assert "401" in operation["responses"], path


def test_one_caller_cannot_see_or_cancel_another_callers_job(server: Server) -> None:
    def job(method: str, path: str, key: str) -> httpx.Response:
        return httpx.request(
            method,
            f"{server.url}{path}",
            headers={"Authorization": f"Bearer {key}"},
            json=["CCO", "c1ccccc1"] if method == "POST" else None,
            timeout=60,
        )

    submitted = job("POST", "/job/submit?api=run", KEYS[0])
    assert submitted.status_code == 202, submitted.text
    job_id = submitted.json()["job_id"]
    for path in (f"/job/status/{job_id}", f"/job/result/{job_id}"):
        assert job("GET", path, KEYS[1]).status_code == 404
    assert job("DELETE", f"/job/{job_id}", KEYS[1]).status_code == 404
    deadline = time.monotonic() + 60
    while (status := job("GET", f"/job/status/{job_id}", KEYS[0])).json()["state"] != "done":
        assert status.status_code == 200 and time.monotonic() < deadline, status.text
        time.sleep(0.1)
    result = job("GET", f"/job/result/{job_id}", KEYS[0])
    assert result.status_code == 200, result.text
    assert job("GET", f"/job/result/{job_id}", KEYS[1]).status_code == 404


def test_no_key_reaches_the_logs(server: Server) -> None:
    refused = call(server, "POST", "/run", WRONG)
    assert_refused(refused)
    accepted = call(server, "POST", "/run", KEYS[0])
    assert accepted.status_code == 200
    # The refusal is logged with the request id the caller got, and nothing of the key.
    request_id = refused.headers["x-request-id"]
    assert server.wait_for_log(request_id), server.log
    assert "POST /run" in server.log  # uvicorn's access log is in the output too
    for secret in (*KEYS, WRONG, ",".join(KEYS)):
        assert secret not in server.log


def test_cors_is_off_unless_origins_are_given(server: Server) -> None:
    for origin in ("https://lab.example.org", "http://127.0.0.1:8000", "null"):
        response = httpx.get(f"{server.url}/card", headers={"Origin": origin, **BEARER}, timeout=30)
        assert response.status_code == 200
        assert not [name for name in response.headers if name.startswith("access-control-")]


def test_it_binds_the_loopback_address_unless_told(server: Server) -> None:
    url = httpx.URL(server.url)
    assert url.host == "127.0.0.1"
    # /proc/net/tcp lists listening sockets (state 0A) as hex address:port.
    listening = {
        line.split()[1]
        for table in ("/proc/net/tcp", "/proc/net/tcp6")
        for line in Path(table).read_text().splitlines()[1:]
        if line.split()[3] == "0A"
    }
    port = f"{url.port:04X}"
    assert f"0100007F:{port}" in listening
    assert f"00000000:{port}" not in listening
    assert not [entry for entry in listening if entry.endswith(port) and len(entry) > 13]
