"""API keys: who may call a served model, and which caller a request comes from.

With no key configured every route is open and every caller is the anonymous principal
``""``. With one or more keys (``--api-key`` or ``ERSILIA_PACK_API_KEY``, comma-separated),
every request except GET and HEAD on the public routes (``routes.py``) needs
``Authorization: Bearer <key>``; a missing or wrong key gets 401 with
``WWW-Authenticate: Bearer``. Each request's ``request.state.principal`` is
a short stable hash of the key it carried, so job owners can be told apart without storing
or logging a key.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
from collections.abc import Iterable
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from ersilia_pack.runtime.http.routes import is_public

logger = logging.getLogger("ersilia_pack.runtime")

SCHEME_NAME = "bearerAuth"
ANONYMOUS = ""
_ERROR_SCHEMA = {"type": "object", "properties": {"detail": {}}, "required": ["detail"]}


def parse_keys(raw: str | None) -> list[str]:
    """The keys of a comma-separated setting; blanks are dropped, so ``""`` means no key."""
    return [key.strip() for key in (raw or "").split(",") if key.strip()]


def principal_of(key: str) -> str:
    """A short, stable name for the caller holding ``key``; the key cannot be read back."""
    return hashlib.sha256(b"ersilia-pack principal\0" + key.encode()).hexdigest()[:16]


def _route_path(scope: Scope) -> str:
    """The path the router matches: without the root path (as Starlette strips it)."""
    path: str = scope.get("path", "")
    root: str = scope.get("root_path", "")
    if root and (path == root or path.startswith(root + "/")):
        path = path[len(root) :]
    return path or "/"


def _bearer_token(scope: Scope) -> bytes | None:
    for name, value in scope.get("headers", ()):
        if name == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                return bytes(token.strip())
            return None
    return None


class ApiKeyMiddleware:
    """Pure ASGI middleware: check the bearer key, set ``state["principal"]``, or answer 401."""

    def __init__(
        self, app: ASGIApp, keys: list[str], also_public: frozenset[str] = frozenset()
    ) -> None:
        self.app = app
        self._also_public = also_public
        # Keys are kept as digests: comparing digests of equal length takes the same time
        # whatever the key's length, and no plain key stays in this object.
        self._keys = [(hashlib.sha256(key.encode()).digest(), principal_of(key)) for key in keys]

    def _principal(self, token: bytes) -> str | None:
        digest = hashlib.sha256(token).digest()
        found = None
        for key_digest, principal in self._keys:  # no early exit: same time for every key
            if hmac.compare_digest(digest, key_digest):
                found = principal
        return found

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        state: dict[str, Any] = scope.setdefault("state", {})
        if not self._keys:
            state["principal"] = ANONYMOUS
            await self.app(scope, receive, send)
            return
        token = _bearer_token(scope)
        principal = self._principal(token) if token is not None else None
        # Method and path both: a public path does not open its other methods.
        method = str(scope.get("method", ""))
        if principal is None and not is_public(method, _route_path(scope), self._also_public):
            await self._refuse(scope, send, state, missing=token is None)
            return
        state["principal"] = principal or ANONYMOUS
        await self.app(scope, receive, send)

    async def _refuse(
        self, scope: Scope, send: Send, state: dict[str, Any], *, missing: bool
    ) -> None:
        reason = "no API key" if missing else "a wrong API key"
        logger.info(
            "refused %s %s: %s [request id %s]",
            scope.get("method", "WEBSOCKET"),
            _route_path(scope),
            reason,
            state.get("request_id", "-"),
        )
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008})
            return
        detail = (
            "this server needs an API key: send the header 'Authorization: Bearer <key>'"
            if missing
            else "the API key is not valid"
        )
        body = json.dumps({"detail": detail}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"www-authenticate", b"Bearer"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def _document(app: FastAPI, also_public: frozenset[str]) -> None:
    """Declare the bearer scheme in OpenAPI, on every operation that needs it."""
    build = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is not None:
            return app.openapi_schema
        schema = build()
        schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
        schemes[SCHEME_NAME] = {
            "type": "http",
            "scheme": "bearer",
            "description": "one of the keys given to ersilia_serve with --api-key",
        }
        for path, operations in schema.get("paths", {}).items():
            for method, operation in operations.items():
                if is_public(method, path, also_public):
                    continue
                if isinstance(operation, dict) and "responses" in operation:
                    operation["security"] = [{SCHEME_NAME: []}]
                    operation["responses"].setdefault(
                        "401",
                        {
                            "description": "no API key, or a wrong one",
                            "content": {"application/json": {"schema": _ERROR_SCHEMA}},
                        },
                    )
        return schema

    app.openapi = openapi  # type: ignore[method-assign]


def add_api_keys(app: FastAPI, api_key: str | None, *, also_public: Iterable[str] = ()) -> None:
    """Install the key check on ``app``; with no key, callers are anonymous and all is open.

    ``also_public`` names routes open to anyone (GET and HEAD) beside the usual public ones
    (``/metrics`` with ``--public-metrics``).

    Add it before CORS and the request-id middleware, so that those stay outside it: a
    refused request still gets its request id and its CORS headers.
    """
    keys = parse_keys(api_key)
    public = frozenset(also_public)
    app.add_middleware(ApiKeyMiddleware, keys=keys, also_public=public)
    if keys:
        _document(app, public)
