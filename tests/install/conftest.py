"""A local package index for the install tests, made once per session."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from local_index import LocalIndex, seed_packages, serving

# (project, version, upload time): alpha and beta each have a release after 2024-12-31,
# the packaging date of the install-as-of fixtures.
RELEASES = [
    ("alpha", "1.0", "2024-01-10T09:00:00Z"),
    ("alpha", "2.0", "2024-06-10T09:00:00Z"),
    ("alpha", "3.0", "2025-03-01T09:00:00Z"),
    ("beta", "1.0", "2024-01-10T09:00:00Z"),
    ("beta", "2.0", "2025-03-01T09:00:00Z"),
    # what conda's "openbabel" becomes under --venv/--system (the real one ships Open Babel)
    ("openbabel-wheel", "3.1.1.5", "2023-01-10T09:00:00Z"),
    ("openbabel-wheel", "3.1.1.22", "2024-06-10T09:00:00Z"),
    ("openbabel-wheel", "3.2.0", "2025-03-01T09:00:00Z"),
]


@pytest.fixture(scope="session")
def package_index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LocalIndex]:
    folder = tmp_path_factory.mktemp("index")
    index = LocalIndex(folder)
    for project, version, uploaded in RELEASES:
        index.add(project, version, uploaded)
    for name in seed_packages():
        index.add_installed(name)
    with serving(index):
        yield index


@pytest.fixture(scope="session")
def index_env(
    package_index: LocalIndex, tmp_path_factory: pytest.TempPathFactory
) -> dict[str, str]:
    """Environment variables for ersilia_pack: only the local index, and a uv cache of the
    session's own (the user's cache never sees these packages)."""
    cache = tmp_path_factory.mktemp("uv-cache")
    return {**package_index.env(), "UV_CACHE_DIR": str(cache)}


@pytest.fixture
def eos(tmp_path: Path) -> Path:
    return tmp_path / "eos"
