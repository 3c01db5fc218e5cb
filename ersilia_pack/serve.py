"""Serving a bundle with uvicorn."""

from __future__ import annotations

import logging
from pathlib import Path

import uvicorn

from ersilia_pack.runtime.bundle import find_bundle
from ersilia_pack.runtime.loader import create_bundle_app
from ersilia_pack.runtime.settings import ServeSettings

logger = logging.getLogger("ersilia_pack")


def serve(
    path: Path,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    settings: ServeSettings | None = None,
    root_path: str = "",
    log_level: str = "info",
) -> None:
    """Serve the bundle at ``path`` (or the newest bundle of the repository at ``path``).

    uvicorn prints ``Uvicorn running on http://HOST:PORT (Press CTRL+C to quit)``; with port 0
    it shows the port it took.
    """
    bundle_dir = find_bundle(path)
    logger.info("serving %s", bundle_dir)
    app = create_bundle_app(bundle_dir, settings)
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        root_path=root_path,
        log_level=log_level,
        timeout_graceful_shutdown=10,
        server_header=False,
    )
    uvicorn.Server(config).run()
