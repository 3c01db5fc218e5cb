"""The server needs the redis package only when a Redis URL is set."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
from helpers import app_client
from jobkit import free_port

from ersilia_pack.errors import ServeError


@pytest.fixture
def no_redis_package(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``import redis`` fail, as in an install without the ``redis`` extra."""
    monkeypatch.setitem(sys.modules, "redis", None)


@pytest.mark.usefixtures("no_redis_package")
def test_jobs_and_cache_work_with_sqlite_when_redis_is_not_installed(bundle: Path) -> None:
    with app_client(bundle, cold=True) as client:
        job_id = client.post("/job/submit", json=["CCO"]).json()["job_id"]
        client.post("/run", json=["hello"])
        cached = client.post("/run?cache_only=true", json=["hello"])
        status = client.get(f"/job/status/{job_id}")

    assert cached.json() == [{"length": 5, "upper": "HELLO"}]
    assert status.status_code == 200


@pytest.mark.usefixtures("no_redis_package")
def test_a_redis_url_without_the_redis_package_says_what_to_install(bundle: Path) -> None:
    client = app_client(bundle, redis_url="redis://127.0.0.1:1/0")

    with pytest.raises(ServeError) as raised, client:
        pass

    assert str(raised.value) == (
        "a Redis URL is set but the redis package is not installed: "
        "pip install 'ersilia-pack[redis]'"
    )


def test_an_unreachable_redis_is_a_clear_error_at_start(bundle: Path) -> None:
    url = f"redis://:secret@127.0.0.1:{free_port()}/0"
    client = app_client(bundle, redis_url=url)

    with pytest.raises(ServeError) as raised, client:
        pass

    message = str(raised.value)
    assert message.startswith(f"cannot use Redis at redis://:***@127.0.0.1:{url.rsplit(':', 1)[1]}")
    assert "secret" not in message
