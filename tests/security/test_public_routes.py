"""Public routes on a real server with an API key: only GET and HEAD on them are open, HEAD
answers as GET does, and no API may take the name of a built-in route."""

from __future__ import annotations

import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from security_helpers import FIXTURES, Server, console_script, pack_cli, serve, wait_ready

from ersilia_pack.runtime.bundle.loader import create_bundle_app
from ersilia_pack.runtime.http.routes import RESERVED_API_NAMES
from ersilia_pack.runtime.settings import ServeSettings

KEY = f"public-routes-{secrets.token_hex(12)}"
PUBLIC = ("/", "/healthz", "/readyz", "/docs", "/redoc", "/openapi.json", "/ui", "/ui/config")
STATIC = "/static/swagger-ui.css"


@pytest.fixture(scope="module")
def server(demo_repository: Path) -> Iterator[Server]:
    with serve(demo_repository, "--api-key", KEY, "--workers", "1") as running:
        wait_ready(running.url)
        yield running


def request(server: Server, method: str, path: str, key: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    body = b'["CCO"]' if method in ("POST", "PUT", "PATCH") else None
    if body is not None:
        headers["Content-Type"] = "application/json"
    return httpx.request(method, server.url + path, headers=headers, content=body, timeout=60)


@pytest.mark.parametrize("method", ["POST", "PUT", "PATCH", "DELETE", "OPTIONS"])
def test_other_methods_on_public_paths_need_the_key(server: Server, method: str) -> None:
    for path in (*PUBLIC, STATIC):
        response = request(server, method, path)
        assert response.status_code == 401, (method, path, response.text)
        assert response.headers["www-authenticate"] == "Bearer"


def test_with_the_key_other_methods_on_public_paths_are_405_naming_get_and_head(
    server: Server,
) -> None:
    for path in ("/healthz", "/readyz", "/docs", "/ui"):
        response = request(server, "POST", path, KEY)
        assert response.status_code == 405, (path, response.text)
        assert set(response.headers["allow"].replace(" ", "").split(",")) == {"GET", "HEAD"}


def test_head_answers_as_get_on_the_public_routes(server: Server) -> None:
    for path in (*PUBLIC, STATIC):
        got = request(server, "GET", path)
        head = request(server, "HEAD", path)
        assert got.status_code == 200, (path, got.text)
        assert head.status_code == 200, (path, head.text)
        assert head.content == b""
        assert head.headers["content-type"] == got.headers["content-type"], path
        if "content-length" in got.headers:
            assert head.headers["content-length"] == got.headers["content-length"], path


def test_head_on_a_protected_route_still_needs_the_key(server: Server) -> None:
    assert request(server, "HEAD", "/info").status_code == 401
    assert request(server, "HEAD", "/info", KEY).status_code == 200


def test_an_api_named_after_a_built_in_route_is_refused_at_pack(tmp_path: Path) -> None:
    done = pack_cli(FIXTURES / "security-reserved-api", tmp_path / "eos")
    assert done.returncode == 1, done.stdout + done.stderr
    for script in ("healthz", "job"):
        assert (
            f"model/framework/{script}.sh: API name '{script}' is reserved: every served "
            f"model has a route /{script}" in done.stderr
        )
    assert "the reserved API names are " + ", ".join(sorted(RESERVED_API_NAMES)) in done.stderr
    assert not (tmp_path / "eos" / "repository" / "reserved-api").exists()


def test_lint_names_the_reserved_api_too() -> None:
    done = subprocess.run(
        [
            console_script("ersilia_model_lint"),
            *("--repo_path", str(FIXTURES / "security-reserved-api")),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    assert done.returncode == 1
    assert "API name 'healthz' is reserved" in done.stderr


def test_the_reserved_names_are_exactly_the_built_in_routes(demo_repository: Path) -> None:
    (bundle,) = [path for path in demo_repository.iterdir() if path.is_dir()]
    app = create_bundle_app(bundle, ServeSettings(api_key=KEY))
    # Routes added to the app itself, and those of included routers (the APIs, the jobs).
    paths = {str(getattr(route, "path", "")) for route in app.routes} | set(app.openapi()["paths"])
    first = {path.strip("/").split("/")[0] for path in paths}
    apis = {"run", "esol"}
    assert apis <= first
    assert first - apis - {""} == RESERVED_API_NAMES
