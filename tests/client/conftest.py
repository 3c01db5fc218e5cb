"""Fixtures of the client and batch-command tests: packed models, fresh copies, servers."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import pytest
from clientkit import fresh_copy
from helpers import DEMO_DIR, pack_fixture, run_command, served


@pytest.fixture(scope="session")
def demo_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/eos-demo packed once with the real ``ersilia_pack --system``; its bundle."""
    eos = tmp_path_factory.mktemp("client-eos")
    done = run_command("ersilia_pack", "--model_dir", DEMO_DIR, "--system", "--eos", eos)
    assert done.returncode == 0, done.stdout + done.stderr
    bundles = sorted((eos / "repository" / "eos-demo").glob("2*"))
    assert bundles, f"no bundle in {eos}"
    return bundles[-1]


@pytest.fixture(scope="session")
def counting_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/fixtures/counting-client packed once (``--system``); treat as read-only."""
    return pack_fixture("counting-client", tmp_path_factory.mktemp("client-counting"))


@pytest.fixture
def counting_repository(counting_bundle: Path, tmp_path: Path) -> Path:
    """A fresh copy of the counting model's repository: its own job database, no cache."""
    return fresh_copy(counting_bundle, tmp_path / "repository")


@pytest.fixture(scope="module")
def demo_url(demo_bundle: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The demo model served (a fresh copy) for one test module; its URL."""
    repository = fresh_copy(demo_bundle, tmp_path_factory.mktemp("client-demo"))
    with served(repository, "--workers", "2") as url:
        yield url


@pytest.fixture
def client_log() -> Iterator[list[str]]:
    """The messages the client logs (its retries), whatever the logging set-up of the run."""
    seen: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            seen.append(record.getMessage())

    log = logging.getLogger("ersilia_pack.client")
    handler, level = Keep(), log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield seen
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
