"""A model that leaves files in its temporary folder: after the run, nothing is left.

Each run gets a TMPDIR of its own that is removed afterwards, so neither the caller's
temporary folder nor the bundle keeps what a model forgot to clean. A warm runner's own
warm-up run is the exception while it serves: its folder lives as long as the runner (its
forked children may use what the warm-up made) and goes when the server stops.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from heavy_helpers import manifest_apis, uncached_client
from helpers import pack_fixture, wait_ready

pytestmark = pytest.mark.slow

LEFTOVER = "ersilia-leftover-*"


def leftovers(*folders: Path) -> list[Path]:
    return sorted(path for folder in folders for path in folder.rglob(LEFTOVER))


def outside_warm_runners(paths: list[Path], bundle: Path) -> list[Path]:
    """Those not in a warm runner's own folder (``state/runs/<api>-warm.*``, its warm-up's)."""
    runs = bundle / "state" / "runs"
    return [
        path
        for path in paths
        if not (path.is_relative_to(runs) and "-warm." in path.relative_to(runs).parts[0])
    ]


@pytest.fixture(scope="module")
def pack_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The TMPDIR the packing process inherits (in place of the machine's /tmp)."""
    return tmp_path_factory.mktemp("pack-tmp")


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory, pack_tmp: Path) -> Iterator[Path]:
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TMPDIR", str(pack_tmp))
        yield pack_fixture("leaves-temp-files", tmp_path_factory.mktemp("repository"))


def test_the_pack_time_runs_leave_nothing_behind(bundle: Path, pack_tmp: Path) -> None:
    assert manifest_apis(bundle)["run"]["decided"]["warm"] is True
    assert leftovers(pack_tmp, bundle) == []


@pytest.mark.parametrize("cold", [False, True], ids=["warm", "cold"])
def test_a_runs_temporary_files_are_removed(
    bundle: Path, cold: bool, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    serve_tmp = tmp_path / "tmp"
    serve_tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(serve_tmp))
    inputs = ["CCO", "c1ccccc1", "N"]
    before = leftovers(bundle)

    with uncached_client(bundle, workers=2, cold=cold) as client:
        wait_ready(client)
        responses = [client.post("/run", json=inputs) for _ in range(3)]
        left_while_serving = leftovers(serve_tmp, bundle)

    for response in responses:
        assert response.status_code == 200, response.text
        # the model really wrote (and read back) a temporary file per input
        assert response.json() == [{"length": 3}, {"length": 8}, {"length": 1}]
    new = [path for path in left_while_serving if path not in before]
    assert outside_warm_runners(new, bundle) == []
    assert [path for path in leftovers(serve_tmp, bundle) if path not in before] == []
