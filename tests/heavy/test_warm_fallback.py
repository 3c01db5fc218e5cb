"""A warm run that never finishes in a forked child: the pack says why and serves the script
warm without forking (a warm process per slot runs it), where that matches the cold run."""

from __future__ import annotations

from pathlib import Path

import pytest
from heavy_helpers import manifest_apis
from helpers import FIXTURES, app_client, run_command, wait_ready, wait_until_gone

pytestmark = pytest.mark.slow


def test_a_model_that_hangs_only_when_forked_is_packed_warm_without_forking(eos: Path) -> None:
    packed = run_command(
        "ersilia_pack", "--model_dir", FIXTURES / "warm-hangs", "--system", "--eos", eos
    )
    # the hung child of the warm check is killed with its runner
    leftovers = wait_until_gone(str(eos))

    assert packed.returncode == 0, packed.stderr
    assert "Traceback" not in packed.stderr
    assert "run cannot run warm in forked children: its warm run failed (" in packed.stderr
    assert "did not finish within 30 s" in packed.stderr
    assert "run runs warm in a process per slot, without forking" in packed.stderr
    assert leftovers == [], f"processes of the warm check outlived the pack: {leftovers}"
    [bundle] = [
        path for path in (eos / "repository" / "warm-hangs").iterdir() if path.name[0] != "."
    ]
    api = manifest_apis(bundle)["run"]
    assert api["warm_script"] == "code/main.py"
    assert (api["decided"]["warm"], api["decided"]["in_process"]) == (True, True)

    # served warm without forking, it answers
    with app_client(bundle, workers=2, timeout=30) as client:
        wait_ready(client)
        response = client.post("/run", json=["CCO", "c1ccccc1", "N"])
    assert response.status_code == 200, response.text
    assert response.json() == [{"length": 3}, {"length": 8}, {"length": 1}]
