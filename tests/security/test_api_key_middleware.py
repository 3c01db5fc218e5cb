"""The key check on its own: who the caller is (request.state.principal), and who is refused."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from ersilia_pack.runtime.http.security import ApiKeyMiddleware, parse_keys, principal_of


async def whoami(request: Request) -> JSONResponse:
    return JSONResponse({"principal": request.state.principal})


def client(keys: list[str]) -> TestClient:
    app = Starlette(routes=[Route("/whoami", whoami), Route("/healthz", whoami)])
    return TestClient(ApiKeyMiddleware(app, keys=keys))


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def test_keys_are_read_from_a_comma_separated_setting() -> None:
    assert parse_keys(" alpha, beta,,gamma ") == ["alpha", "beta", "gamma"]
    assert parse_keys("") == []
    assert parse_keys(None) == []


def test_without_keys_everyone_is_the_anonymous_principal() -> None:
    with client([]) as http:
        response = http.get("/whoami")
        assert response.status_code == 200
        assert response.json() == {"principal": ""}
        assert http.get("/whoami", headers=bearer("anything")).json() == {"principal": ""}


def test_each_key_is_its_own_stable_principal_and_not_the_key() -> None:
    with client(["alpha-key", "beta-key"]) as http:
        alpha = http.get("/whoami", headers=bearer("alpha-key")).json()["principal"]
        beta = http.get("/whoami", headers=bearer("beta-key")).json()["principal"]
        again = http.get("/whoami", headers={"Authorization": "bearer  alpha-key "}).json()
    assert alpha == principal_of("alpha-key") == again["principal"]
    assert beta == principal_of("beta-key")
    assert alpha != beta
    assert len(alpha) == 16 and int(alpha, 16) >= 0
    assert "alpha" not in alpha
    # Another server with the same keys names the same callers (jobs survive restarts).
    with client(["beta-key", "alpha-key"]) as http:
        assert http.get("/whoami", headers=bearer("alpha-key")).json()["principal"] == alpha


@pytest.mark.parametrize(
    "headers",
    [
        {},
        {"Authorization": "Bearer wrong-key"},
        {"Authorization": "Bearer "},
        {"Authorization": "Basic YWxwaGEta2V5Og=="},
        {"Authorization": "alpha-key"},
        {"Authorization": "Bearer alpha-key-and-more"},
        {"Authorization": "Bearer alpha"},
    ],
)
def test_a_missing_or_wrong_key_is_refused(headers: dict[str, str]) -> None:
    with client(["alpha-key"]) as http:
        response = http.get("/whoami", headers=headers)
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert response.headers["content-type"] == "application/json"
    assert "Bearer" in response.json()["detail"] or "not valid" in response.json()["detail"]
    assert "alpha-key" not in response.text


def test_public_routes_answer_anyone_as_anonymous() -> None:
    with client(["alpha-key"]) as http:
        assert http.get("/healthz").json() == {"principal": ""}
        assert http.get("/healthz", headers=bearer("wrong")).json() == {"principal": ""}
        known = http.get("/healthz", headers=bearer("alpha-key")).json()
        assert known == {"principal": principal_of("alpha-key")}


def test_behind_a_root_path_the_same_routes_are_public() -> None:
    app = Starlette(routes=[Route("/whoami", whoami), Route("/healthz", whoami)])
    with TestClient(ApiKeyMiddleware(app, keys=["alpha-key"]), root_path="/r") as http:
        assert http.get("/r/healthz").status_code == 200
        assert http.get("/r/whoami").status_code == 401
        assert http.get("/rhealthz").status_code == 401  # not under the root path
        assert http.get("/r/whoami", headers=bearer("alpha-key")).status_code == 200
