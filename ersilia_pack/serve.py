"""Serving a bundle with uvicorn."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import uvicorn

from ersilia_pack.errors import ServeError
from ersilia_pack.runtime.bundle.loader import create_bundle_app
from ersilia_pack.runtime.bundle.manifest import find_bundle
from ersilia_pack.runtime.settings import ServeSettings
from ersilia_pack.runtime.state.store import open_store

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
    settings = settings or ServeSettings.from_env()
    # What the server and its model processes create (the jobs database, the cache, run
    # folders) is the owner's only, whatever umask the caller left (the Ersilia client's is 0).
    os.umask(0o077)
    app = create_bundle_app(bundle_dir, settings)
    if settings.redis_url:
        # Fail here, with a plain message, rather than inside uvicorn's start-up.
        open_store(app.state.bundle, settings).close()
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        root_path=root_path,
        log_level=log_level,
        timeout_graceful_shutdown=10,
        server_header=False,
    )
    try:
        uvicorn.Server(config).run()
    except SystemExit as stopped:
        # uvicorn exits with its own code when it cannot start (port taken, app start-up
        # failed); ersilia_serve's code for that is the serve error's.
        if stopped.code in (0, None):
            raise
        raise ServeError(
            f"{app.state.bundle.manifest.model_id} could not be served on {host}:{port}: "
            "see uvicorn's error above"
        ) from stopped
