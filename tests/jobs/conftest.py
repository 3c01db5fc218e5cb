"""Fixtures of the job and cache tests: packed models with fresh state, Redis, counters."""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helpers import pack_fixture, run_command
from jobkit import counting_model, redis_server

from ersilia_pack.pack import pack

DEMO = Path(__file__).resolve().parents[2] / "examples" / "eos-demo"


def _pack(model_dir: Path, repository_root: Path) -> Path:
    """Pack with the system backend; the pack-time example run is neither counted nor held."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("JOBS_TEST_COUNTER", raising=False)
        patch.delenv("JOBS_TEST_GATE", raising=False)
        patch.delenv("JOBS_TEST_BROKEN", raising=False)
        patch.delenv("JOBS_TEST_FAILURES", raising=False)
        return pack(model_dir, backend="system", repository_root=repository_root).bundle_dir


def _fresh_copy(bundle: Path, root: Path) -> Path:
    """A copy of a packed bundle in its own repository folder: its own state, nothing shared."""
    target = root / bundle.parent.name / bundle.name
    shutil.copytree(bundle, target, ignore=shutil.ignore_patterns("state"))
    return target


@pytest.fixture(scope="session")
def counting_packed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The counting model, packed once per session (treat as read-only; copy it to serve)."""
    root = tmp_path_factory.mktemp("counting")
    model_dir = counting_model(root / "model")
    return _pack(model_dir, root / "repository")


@pytest.fixture
def bundle(counting_packed: Path, tmp_path: Path) -> Path:
    """A fresh copy of the counting model's bundle: an empty job database and cache."""
    return _fresh_copy(counting_packed, tmp_path / "repository")


@pytest.fixture
def pack_counting(tmp_path: Path) -> Callable[..., Path]:
    """Pack a counting model with extra metadata (``Task="Generative"`` ...); its bundle."""

    def pack_with(**card: str) -> Path:
        model_dir = counting_model(tmp_path / "variant-model", **card)
        return _pack(model_dir, tmp_path / "variant")

    return pack_with


@pytest.fixture
def counter(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The file the counting model adds a line to for every run (the inputs it computed)."""
    path = tmp_path / "runs.txt"
    monkeypatch.setenv("JOBS_TEST_COUNTER", str(path))
    return path


@pytest.fixture
def gate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A closed gate: model runs wait until the file exists (the test creates it to open it)."""
    path = tmp_path / "gate-open"
    monkeypatch.setenv("JOBS_TEST_GATE", str(path))
    try:
        yield path
    finally:
        path.touch()  # never leave a run waiting behind a test that failed


@pytest.fixture
def redis_url(tmp_path: Path) -> Iterator[str]:
    """A real redis-server of this test only."""
    with redis_server(tmp_path) as url:
        yield url


@pytest.fixture(params=["sqlite", "redis"])
def store_settings(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """Settings for each store: the default SQLite file, then a real Redis."""
    if request.param == "sqlite":
        yield {}
        return
    folder = tmp_path / "redis"
    folder.mkdir()
    with redis_server(folder) as url:
        yield {"redis_url": url}


@pytest.fixture(scope="session")
def demo_packed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """examples/eos-demo packed once with the real ``ersilia_pack --system``; its bundle."""
    eos = tmp_path_factory.mktemp("eos")
    done = run_command("ersilia_pack", "--model_dir", DEMO, "--system", "--eos", eos)
    assert done.returncode == 0, done.stdout + done.stderr
    bundles = sorted((eos / "repository" / "eos-demo").glob("2*"))
    assert bundles, f"no bundle in {eos}"
    return bundles[-1]


@pytest.fixture
def demo_repository(demo_packed: Path, tmp_path: Path) -> Path:
    """A repository folder holding a fresh copy of the packed demo: no jobs, empty cache."""
    return _fresh_copy(demo_packed, tmp_path / "demo").parent


@pytest.fixture(scope="session")
def sleepy_packed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/fixtures/sleepy-model packed once per session (copy it to serve)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("SLEEPY_COUNTER", raising=False)
        return pack_fixture("sleepy-model", tmp_path_factory.mktemp("sleepy"))
