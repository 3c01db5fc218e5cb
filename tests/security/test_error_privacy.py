"""An unexpected failure inside the app: the caller gets a JSON 500 with a request id and
nothing else (no traceback, path or environment value); the log gets the traceback under the
same id. A route that raises is added to a packed bundle's app, which runs in-process."""

from __future__ import annotations

import logging
import os
from pathlib import Path

from fastapi.testclient import TestClient

from ersilia_pack.runtime.bundle.loader import create_bundle_app
from ersilia_pack.runtime.settings import ServeSettings

KEY = "privacy-key-0123456789"


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_an_unexpected_failure_is_a_bare_json_500_and_a_logged_traceback(
    faults_repository: Path,
) -> None:
    bundle = next(path for path in faults_repository.iterdir() if path.name[:1].isdigit())
    app = create_bundle_app(bundle, ServeSettings(workers=1, timeout=5, api_key=KEY))
    secret_path = f"{bundle}/model/checkpoints/weights.bin"
    home = os.environ.get("HOME", "/root")

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError(f"cannot open {secret_path} (HOME={home}, key {KEY})")

    collect = Collect()
    runtime_log = logging.getLogger("ersilia_pack.runtime")
    runtime_log.addHandler(collect)
    try:
        with TestClient(app, raise_server_exceptions=False) as client:
            headers = {"Authorization": f"Bearer {KEY}"}
            response = client.get("/boom", headers=headers)
            chosen = client.get("/boom", headers={**headers, "X-Request-ID": "caller-id-42"})
            unsafe = client.get("/boom", headers={**headers, "X-Request-ID": "a b/../c"})
    finally:
        runtime_log.removeHandler(collect)
    assert response.status_code == 500
    rid = response.headers["x-request-id"]
    assert response.json() == {"detail": "internal server error", "request_id": rid}
    for leak in ("Traceback", "RuntimeError", secret_path, home, KEY, "weights.bin"):
        assert leak not in response.text
        assert leak not in str(response.headers)
    # A caller's own plain id is kept; one that is not plain is replaced.
    assert chosen.json()["request_id"] == chosen.headers["x-request-id"] == "caller-id-42"
    assert unsafe.headers["x-request-id"] != "a b/../c"
    assert len(unsafe.headers["x-request-id"]) == 32
    # The log has the whole story under the same id.
    (record,) = [r for r in collect.records if rid in r.getMessage()]
    assert record.exc_info is not None
    assert secret_path in str(record.exc_info[1])
