"""Serving a bundle with uvicorn."""

from __future__ import annotations

import errno
import logging
import os
import socket
from pathlib import Path

import uvicorn

from ersilia_pack.errors import ServeError
from ersilia_pack.runtime.bundle.loader import create_bundle_app
from ersilia_pack.runtime.bundle.manifest import find_bundle
from ersilia_pack.runtime.settings import ServeSettings
from ersilia_pack.runtime.state.store import open_store

logger = logging.getLogger("ersilia_pack")


class NoBundleError(ServeError):
    """The folder to serve does not exist or holds no finished bundle: the argument is wrong."""

    exit_code = 1


def _port_taken(host: str, port: int) -> bool:
    """Whether ``host:port`` is bound by another process now (a port of 0 never is)."""
    if port == 0:
        return False
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError:
        return False  # uvicorn says what is wrong with the host
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        # as uvicorn binds: a port left in TIME_WAIT by a stopped server is free
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            return error.errno == errno.EADDRINUSE
    return False


def _taken_message(model_id: str, host: str, port: int) -> str:
    return (
        f"{model_id} could not be served: port {port} on {host} is taken by another program; "
        "choose another with --port, or --port 0 for a free one (the line "
        "'Uvicorn running on http://HOST:PORT' says which)"
    )


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
    try:
        bundle_dir = find_bundle(path)
    except ServeError as error:
        hint = (
            ""
            if path.expanduser().is_dir()
            else ": pass a model's repository folder ($EOS/repository/MODEL_ID) or a bundle in it"
        )
        raise NoBundleError(f"{error}{hint}") from error
    logger.info("serving %s", bundle_dir)
    settings = settings or ServeSettings.from_env()
    # What the server and its model processes create (the jobs database, the cache, run
    # folders) is the owner's only, whatever umask the caller left (the Ersilia client's is 0).
    os.umask(0o077)
    app = create_bundle_app(bundle_dir, settings)
    model_id = app.state.bundle.manifest.model_id
    if _port_taken(host, port):  # before the model starts, not after
        raise ServeError(_taken_message(model_id, host, port))
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
        if _port_taken(host, port):  # taken while the model started
            raise ServeError(_taken_message(model_id, host, port)) from stopped
        raise ServeError(
            f"{model_id} could not be served on {host}:{port}: see uvicorn's error above"
        ) from stopped
