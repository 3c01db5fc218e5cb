"""A legacy script whose library refuses a process forked after it was imported (CUDA's rule).

`fork-refusing` stands in for a model that uses CUDA from run.sh, with no GPU: its library
takes a second to import and raises in any process but the one that imported it. Forked warm
runs fail, so the pack serves it warm in a process per slot that runs its jobs itself; it
must stay right under concurrent requests, and each run must not pay the import again.
"""

from __future__ import annotations

import json
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from helpers import FIXTURES, run_command, served

pytestmark = pytest.mark.slow

CONCURRENT = 40


@pytest.fixture(scope="module")
def packed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, dict[str, object]]:
    eos = tmp_path_factory.mktemp("eos")
    done = run_command(
        "ersilia_pack", "--model_dir", FIXTURES / "fork-refusing", "--system", "--eos", eos
    )
    assert done.returncode == 0, done.stderr
    (bundle,) = (eos / "repository" / "fork-refusing").glob("2*")
    (api,) = json.loads((bundle / "manifest.json").read_text())["apis"]
    return bundle, done.stderr, api


def test_the_pack_serves_it_warm_without_forking(
    packed: tuple[Path, str, dict[str, object]],
) -> None:
    _, stderr, api = packed
    assert api["decided"]["warm"] is True and api["decided"]["in_process"] is True, stderr
    assert "runs warm in a process per slot, without forking" in stderr


def test_it_is_right_under_concurrent_requests_and_runs_warm(
    packed: tuple[Path, str, dict[str, object]], tmp_path: Path
) -> None:
    bundle, _, _ = packed
    imports = tmp_path / "imports"
    inputs = [[f"C{'C' * k}O", "N" * k, "c1ccccc1"] for k in range(1, CONCURRENT + 1)]
    env = {"DEVICELIB_IMPORTS": str(imports)}
    with served(bundle, "--cache-size", "0", "--workers", "2", env=env) as url:
        ready = httpx.get(f"{url}/readyz", timeout=30)
        while ready.status_code != 200:
            time.sleep(0.1)
            ready = httpx.get(f"{url}/readyz", timeout=30)
        with ThreadPoolExecutor(CONCURRENT) as pool:
            answers = list(
                pool.map(lambda v: httpx.post(f"{url}/run", json=v, timeout=120), inputs)
            )
        one = httpx.post(f"{url}/run", json=["CCCO"], timeout=60)
    assert ready.json()["checks"]["run"]["mode"] == "warm, in-process"
    for values, answer in zip(inputs, answers):
        assert answer.status_code == 200, answer.text
        assert answer.json() == [{"length": len(v)} for v in values]
    assert one.json() == [{"length": 4}]
    # a cold run imports the library again (a second each); here each slot imported it once
    assert len(imports.read_text().split()) == 2
