"""``GET /ui``: a page for people, to run the model from a browser.

The page is static (plain HTML, CSS and JavaScript shipped in ``static/ui/``, nothing fetched
from elsewhere), so it loads without an API key. ``GET /ui/config`` tells it what it needs
before it may read anything else: whether a key is needed, the APIs, and when to use a job.
Everything it shows then comes from the model's own routes, behind the key when one is set.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import FileResponse, RedirectResponse, Response

from ersilia_pack.runtime.bundle.manifest import Bundle
from ersilia_pack.runtime.http.openapi import get_and_head
from ersilia_pack.runtime.http.security import parse_keys
from ersilia_pack.runtime.settings import ServeSettings

PAGE = Path(__file__).resolve().parent / "static" / "ui" / "index.html"
# Above this many inputs the page submits a job and follows its progress.
JOB_THRESHOLD = 2000


def wants_html(request: Request) -> bool:
    """A browser asking for a page: its Accept names HTML (the Ersilia client sends none)."""
    return "text/html" in request.headers.get("accept", "")


def page_redirect(request: Request) -> Response:
    """Send a browser from ``/`` to the page."""
    root = request.scope.get("root_path", "")
    return RedirectResponse(f"{root}/ui", status_code=307, headers={"Vary": "Accept"})


def add_ui(app: FastAPI, bundle: Bundle, settings: ServeSettings) -> None:
    """Serve the page at ``/ui`` and its settings at ``/ui/config``; link it from ``/docs``.

    The config says no more than ``/openapi.json`` already tells anyone: the model's id,
    title and APIs.
    """
    apis = list(bundle.apis)
    config: dict[str, Any] = {
        "model_id": bundle.manifest.model_id,
        "title": str(bundle.card.get("Title") or bundle.manifest.model_id),
        "slug": bundle.manifest.slug,
        "apis": apis,
        "default_api": "run" if "run" in apis else apis[0],
        "auth": bool(parse_keys(settings.api_key)),
        "job_threshold": min(JOB_THRESHOLD, settings.max_inputs),
    }
    app.description = (
        f"{app.description}\n\n"
        "**[Open the page for people](ui)**: paste or upload inputs, run the model, "
        "download the results."
    ).strip()

    async def page() -> FileResponse:
        return FileResponse(PAGE, media_type="text/html", headers={"Cache-Control": "no-cache"})

    async def page_config() -> dict[str, Any]:
        return config

    get_and_head(app, "/ui", page, include_in_schema=False)
    get_and_head(
        app,
        "/ui/config",
        page_config,
        tags=["model"],
        summary="What the page needs to start: whether an API key is needed, and the APIs",
    )
