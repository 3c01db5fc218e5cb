"""A fault in the server's own run machinery, not in the model: the run folder cannot be made.

The request must get a clean JSON 5xx with its request id, promptly, and the server must
answer again once the folder is back. (A run that raises anything but the runners' own
errors must not leave its callers waiting forever.)
"""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx
from security_helpers import FIXTURES, pack_repository, serve, wait_ready


def test_a_run_folder_that_cannot_be_made_is_a_clean_5xx_not_a_hang(tmp_path: Path) -> None:
    repository = pack_repository(FIXTURES / "security-faults", tmp_path / "eos", "--no-check")
    (bundle,) = [path for path in repository.iterdir() if path.name[:1].isdigit()]
    # security-faults' other APIs fail their examples on purpose: no start-up self-check
    with serve(repository, "--workers", "1", "--timeout", "5", "--no-self-check") as server:
        wait_ready(server.url)
        runs = bundle / "state" / "runs"
        shutil.rmtree(runs, ignore_errors=True)
        runs.write_text("a file where the run folders should go\n")
        try:
            response = httpx.post(f"{server.url}/ok", json=["abc"], timeout=20)
        finally:
            runs.unlink()
            runs.mkdir()
        assert response.status_code == 502, response.text
        assert response.headers["content-type"] == "application/json"
        assert response.json()["detail"]
        for leak in ("Traceback", str(bundle), "NotADirectoryError: [Errno"):
            assert leak not in response.text
        assert server.wait_for_log(response.headers["x-request-id"])
        again = httpx.post(f"{server.url}/ok", json=["abc"], timeout=30)
        assert again.status_code == 200 and again.json() == [{"length": 3}]
