"""Job ids and job scope: an id of any other shape than the server's own names no job (it
never reaches a Redis key name or a query), and a job is found only through the model it was
made for, even when two models share a state folder."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from helpers import app_client, pack_fixture
from security_helpers import redis_server

INPUTS = ["CCO", "CCCC", "c1ccccc1"]


def fresh_bundle(repository: Path, target: Path) -> Path:
    """A copy of the packed bundle in ``repository`` with no state of its own."""
    (bundle,) = [path for path in repository.iterdir() if path.is_dir()]
    return Path(shutil.copytree(bundle, target, ignore=shutil.ignore_patterns("state")))


def finished(client: TestClient, job_id: str) -> dict[str, Any]:
    deadline = time.monotonic() + 60
    while True:
        status: dict[str, Any] = client.get(f"/job/status/{job_id}").json()
        if status["state"] in ("done", "failed", "cancelled"):
            return status
        assert time.monotonic() < deadline, status
        time.sleep(0.05)


@pytest.fixture(params=["sqlite", "redis"])
def store_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    if request.param == "sqlite":
        yield {}
        return
    folder = tmp_path / "redis"
    folder.mkdir()
    with redis_server(folder) as url:
        yield {"redis_url": url}


def test_ids_not_of_the_servers_shape_name_no_job(
    demo_repository: Path, tmp_path: Path, store_settings: dict[str, str]
) -> None:
    bundle = fresh_bundle(demo_repository, tmp_path / "demo")
    with app_client(bundle, workers=1, **store_settings) as client:
        submitted = client.post("/job/submit?api=run", json=INPUTS)
        assert submitted.status_code == 202, submitted.text
        job_id = submitted.json()["job_id"]
        assert finished(client, job_id)["state"] == "done"

        # In Redis, <id>:inputs and <id>:chunks are the names of the job's other keys.
        for other in (
            f"{job_id}:inputs",
            f"{job_id}:chunks",
            f"{job_id}:entries",
            job_id.upper(),
            job_id[:-1],
            f"{job_id}0",
            "*",
            "x' OR '1'='1",
        ):
            for method, path in (
                ("GET", f"/job/status/{other}"),
                ("GET", f"/job/result/{other}"),
                ("DELETE", f"/job/{other}"),
            ):
                response = client.request(method, path)
                assert response.status_code == 404, (method, path, response.text)
                assert response.json()["detail"]

        # The job itself is untouched by all that.
        assert client.get(f"/job/status/{job_id}").json()["state"] == "done"
        rows = client.get(f"/job/result/{job_id}").json()
        assert len(rows) == len(INPUTS)


def test_a_job_is_found_only_through_the_model_it_was_made_for(
    demo_repository: Path, tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
) -> None:
    demo = fresh_bundle(demo_repository, tmp_path / "demo")
    other = pack_fixture("stdlib-simple", tmp_path_factory.mktemp("stdlib-simple"))
    shared = {"state_dir": str(tmp_path / "shared-state")}
    with (
        app_client(demo, workers=1, **shared) as model_a,
        app_client(other, workers=1, **shared) as model_b,
    ):
        job_id = model_a.post("/job/submit?api=run", json=INPUTS).json()["job_id"]
        assert finished(model_a, job_id)["state"] == "done"

        # Both models have a run API, and the job is in the folder both read.
        assert model_b.get(f"/job/status/{job_id}").status_code == 404
        assert model_b.get(f"/job/result/{job_id}").status_code == 404
        assert model_b.delete(f"/job/{job_id}").status_code == 404

        assert model_a.get(f"/job/status/{job_id}").json()["state"] == "done"
        assert len(model_a.get(f"/job/result/{job_id}").json()) == len(INPUTS)
        # Its own model's jobs the other server still serves.
        own = model_b.post("/job/submit?api=run", json=INPUTS).json()["job_id"]
        assert finished(model_b, own)["state"] == "done"
        assert model_a.get(f"/job/status/{own}").status_code == 404
