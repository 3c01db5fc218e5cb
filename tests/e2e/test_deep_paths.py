"""A model that uses multiprocessing, packed and served from a deep folder.

Python's multiprocessing puts its Unix sockets in TMPDIR, and a socket's path may be at most
107 bytes. A bundle under a folder of 150 characters still serves such a model, warm and cold,
to concurrent callers: every run's TMPDIR is short whatever the bundle's path.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from helpers import pack_fixture, served

pytestmark = pytest.mark.slow

REQUESTS = 20


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    deep = tmp_path_factory.mktemp("repository") / ("deep-" + "x" * 145)
    assert len(str(deep)) > 150
    return pack_fixture("uses-multiprocessing", deep)


def test_the_pack_serves_it_warm(bundle: Path) -> None:
    apis = json.loads((bundle / "manifest.json").read_text())["apis"]
    assert [api["decided"]["warm"] for api in apis] == [True]


@pytest.mark.parametrize("mode", [[], ["--cold"]], ids=["warm", "cold"])
def test_concurrent_requests_get_their_rows(bundle: Path, mode: list[str]) -> None:
    inputs = [[f"in{k}", "c1ccccc1", "x" * k] for k in range(1, REQUESTS + 1)]
    with served(bundle.parent, "--cache-size", "0", *mode) as url:

        def call(values: list[str]) -> httpx.Response:
            return httpx.post(f"{url}/run", json=values, timeout=120)

        with ThreadPoolExecutor(REQUESTS) as pool:
            responses = list(pool.map(call, inputs))
    for values, response in zip(inputs, responses):
        assert response.status_code == 200, response.text
        assert response.json() == [{"length": len(v), "upper": v.upper()} for v in values]
