"""The app factory every generated app calls, and the routes all models share."""

from __future__ import annotations

import html
import logging
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException, Request, Response
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.middleware.cors import CORSMiddleware
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ersilia_pack import __version__
from ersilia_pack.runtime.bundle.manifest import Bundle, load_bundle, make_state_dir
from ersilia_pack.runtime.engine.service import REQUEST_ID, ModelService, PredictionError
from ersilia_pack.runtime.http import job_routes as job_routes
from ersilia_pack.runtime.http import metrics, ui
from ersilia_pack.runtime.http.body import read_inputs
from ersilia_pack.runtime.http.io import dumps, shape
from ersilia_pack.runtime.http.openapi import get_and_head
from ersilia_pack.runtime.http.security import add_api_keys
from ersilia_pack.runtime.jobs.manager import JobManager
from ersilia_pack.runtime.predictor import Predictor
from ersilia_pack.runtime.settings import ServeSettings
from ersilia_pack.runtime.state.store import open_store

logger = logging.getLogger("ersilia_pack.runtime")
STATIC_DIR = Path(__file__).resolve().parent / "static"
# A caller's own request id is kept when it is plain enough to write into logs.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")


def json_response(
    payload: Any, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """A JSON response serialised once, compactly, with no NaN."""
    return Response(
        dumps(payload), status_code=status_code, headers=headers, media_type="application/json"
    )


def service_of(request: Request) -> ModelService:
    service: ModelService = request.app.state.service
    return service


def predictor_of(request: Request) -> Predictor:
    predictor: Predictor = request.app.state.predictor
    return predictor


async def predict_response(
    request: Request,
    api: str,
    *,
    orient: str,
    fetch_cache: bool = True,
    save_cache: bool = True,
    cache_only: bool = False,
    with_meta: bool = False,
) -> Response:
    """Answer ``POST /<api>``: one typed row per input, in order, shaped by ``orient``."""
    inputs = await read_inputs(request)
    predictor = predictor_of(request)
    try:
        prediction = await predictor.predict(
            api, inputs, fetch_cache=fetch_cache, save_cache=save_cache, cache_only=cache_only
        )
    except PredictionError as error:
        raise HTTPException(error.status_code, error.detail) from error
    names = predictor.service.bundle.apis[api].column_names
    result = shape(prediction.rows, names, orient)
    headers = {
        "X-Failed-Rows": str(len(prediction.errors)),
        "X-Cached-Rows": str(prediction.cached),
    }
    if with_meta:
        failed = [
            {"index": i, "input": inputs[i], "reason": reason}
            for i, reason in sorted(prediction.errors.items())
        ]
        return json_response({"result": result, "meta": {"failed": failed}}, headers=headers)
    return json_response(result, headers=headers)


def _add_shared_routes(app: FastAPI, bundle: Bundle) -> None:
    model_id, slug = bundle.manifest.model_id, bundle.manifest.slug

    async def root(request: Request) -> Response:
        if ui.wants_html(request):
            return ui.page_redirect(request)
        return json_response({model_id: slug}, headers={"Vary": "Accept"})

    get_and_head(
        app,
        "/",
        root,
        tags=["model"],
        summary="Model id and slug",
        description="A browser (Accept: text/html) is sent to the page at /ui instead.",
        response_model=dict[str, str],
        responses={307: {"description": "to the page at /ui, for a browser"}},
    )

    async def info() -> dict[str, Any]:
        apis = list(bundle.apis)
        return {
            **bundle.information,
            "model_id": model_id,
            "Slug": slug,
            "api_list": apis,
            "apis_list": apis,
            "api_schema": bundle.api_schema,
        }

    # One route per method: a route with several methods gives them all one operation id,
    # which breaks the OpenAPI document (FastAPI warns "Duplicate Operation ID").
    for method in ("GET", "POST", "HEAD"):
        app.add_api_route(
            "/info",
            info,
            methods=[method],
            tags=["model"],
            summary="Model information: card, APIs and their schema",
            include_in_schema=method != "HEAD",
        )

    async def info_other_methods() -> None:
        # With one route per method, the router's 405 would name the first route's only.
        raise HTTPException(405, "Method Not Allowed", headers={"Allow": "GET, POST, HEAD"})

    app.add_api_route(
        "/info",
        info_other_methods,
        methods=["PUT", "PATCH", "DELETE", "OPTIONS", "TRACE"],
        include_in_schema=False,
    )

    @app.get("/card", tags=["model"], summary="The model's metadata card")
    async def card() -> dict[str, Any]:
        return bundle.card

    @app.get(
        "/card/{field}",
        tags=["model"],
        summary="One field of the card",
        responses={404: {"description": "the card has no such field"}},
    )
    async def card_field(field: str) -> Any:
        card = bundle.card
        if field not in card:
            raise HTTPException(404, f"field {field!r} is not in the card of {model_id}")
        return card[field]

    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    get_and_head(app, "/healthz", healthz, tags=["health"], summary="The server is alive")

    async def readyz(request: Request) -> JSONResponse:
        service = service_of(request)
        readiness = service.readiness()
        apis = {name: state["ready"] for name, state in readiness.items()}
        ready = all(apis.values())
        # ``apis``: ready or not, by API; ``checks``: each API's self-check and served mode
        body = {"ready": ready, "apis": apis, "checks": readiness}
        return JSONResponse(body, status_code=200 if ready else 503)

    get_and_head(
        app,
        "/readyz",
        readyz,
        tags=["health"],
        summary="Every API can answer now",
        responses={503: {"description": "an API cannot answer yet"}},
    )


def _add_docs(app: FastAPI, title: str) -> None:
    app.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")
    # FastAPI's page helpers write the title into the page as it is.
    page_title = html.escape(title)

    async def docs(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_swagger_ui_html(
            openapi_url=f"{root}/openapi.json",
            title=f"{page_title} - docs",
            swagger_js_url=f"{root}/static/swagger-ui-bundle.js",
            swagger_css_url=f"{root}/static/swagger-ui.css",
            swagger_favicon_url=f"{root}/static/favicon-32x32.png",
        )

    async def redoc(request: Request) -> HTMLResponse:
        root = request.scope.get("root_path", "")
        return get_redoc_html(
            openapi_url=f"{root}/openapi.json",
            title=f"{page_title} - reference",
            redoc_js_url=f"{root}/static/redoc.standalone.js",
            redoc_favicon_url=f"{root}/static/favicon-32x32.png",
            with_google_fonts=False,
        )

    get_and_head(app, "/docs", docs, include_in_schema=False)
    get_and_head(app, "/redoc", redoc, include_in_schema=False)


class RequestIdMiddleware:
    """Pure ASGI middleware: every request gets an id, answered in ``X-Request-ID``.

    A failure no handler caught is logged with that id and answered as JSON 500 carrying the
    id, never as a traceback.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        given = next((v for k, v in scope.get("headers", ()) if k == b"x-request-id"), b"")
        text = given.decode("latin-1")
        rid = text if _REQUEST_ID.fullmatch(text) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = rid
        REQUEST_ID.set(rid)  # this request's own context: its log lines carry the id
        header = (b"x-request-id", rid.encode())
        started = False

        async def send_with_id(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
                message["headers"] = [*message.get("headers", []), header]
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            logger.exception(
                "request %s %s failed [request id %s]", scope.get("method"), scope.get("path"), rid
            )
            if started:
                raise
            response = JSONResponse(
                {"detail": "internal server error", "request_id": rid}, status_code=500
            )
            await response(scope, receive, send_with_id)


def _add_error_handling(app: FastAPI) -> None:
    app.add_middleware(RequestIdMiddleware)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        problems = [
            {
                "loc": list(item.get("loc", ())),
                "msg": item.get("msg", ""),
                "type": item.get("type", ""),
            }
            for item in error.errors()
        ]
        return JSONResponse({"detail": problems}, status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException) -> Response:
        if error.status_code == 404 and error.detail == "Not Found":  # no such route
            bundle: Bundle = request.app.state.bundle
            apis = ", ".join(f"POST /{name}" for name in bundle.apis)
            detail = (
                f"no route {request.method} {request.url.path[:200]}; this model's APIs: "
                f"{apis}; see /docs"
            )
            return JSONResponse({"detail": detail}, status_code=404)
        return await http_exception_handler(request, error)


def build_app(bundle_dir: Path, settings: ServeSettings | None = None) -> FastAPI:
    """A FastAPI app serving the bundle at ``bundle_dir``; generated apps add their API routes."""
    settings = settings or ServeSettings.from_env()
    bundle = load_bundle(bundle_dir, state_dir=settings.state_dir)
    card = bundle.card
    title = str(card.get("Title") or bundle.manifest.model_id)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        make_state_dir(bundle)
        store = open_store(bundle, settings)
        service = ModelService(bundle, settings)
        predictor = Predictor.for_bundle(service, store, settings)
        app.state.service = service
        app.state.predictor = predictor
        predictor.on_prediction = app.state.metrics.observe_prediction
        await service.start()
        app.state.jobs = jobs = JobManager(store, predictor, settings)
        try:
            await jobs.start()
            yield
        finally:
            await jobs.stop()
            await service.stop()
            store.close()

    app = FastAPI(
        title=f"{bundle.manifest.model_id}: {title}",
        # The docs pages render the description as Markdown, HTML in it included (the title
        # they show as text): escaped, a card's markup shows as the text it is.
        description=html.escape(str(card.get("Description", ""))),
        version=f"{bundle.manifest.tag} (ersilia_pack {__version__})",
        docs_url=None,
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.bundle = bundle
    app.state.settings = settings
    public = ["/metrics"] if settings.public_metrics else []
    # innermost: refusals still get CORS and a request id
    add_api_keys(app, settings.api_key, also_public=public)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
        )
    _add_error_handling(app)
    metrics.add_metrics(app)  # outermost: it sees every answer, refusals too
    _add_shared_routes(app, bundle)
    _add_docs(app, title)
    ui.add_ui(app, bundle, settings)
    app.include_router(job_routes.job_router(bundle))
    return app
