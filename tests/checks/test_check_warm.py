"""Warm versus cold at pack time, through the served app: warm only when both agree exactly,
and a warm run that hangs falls back to cold with the reason."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import pytest
from helpers import FIXTURES, app_client, write_tree

from ersilia_pack.pack import pack
from ersilia_pack.runtime.bundle.manifest import load_bundle

# The script answers 1.0, plus 1e-9 when `decimal` was imported before it ran (a warm run
# pre-imports its imports): within 1e-4 of the cold run, yet not the same answer.
NEARLY = (
    "import sys\n\nPRELOADED = 'decimal' in sys.modules\n\nimport decimal  # noqa\n\n"
    "rows = list(open(sys.argv[1]))[1:]\n"
    "with open(sys.argv[2], 'w') as handle:\n"
    "    handle.write('value\\n')\n"
    "    handle.writelines(f'{1.0 + (1e-9 if PRELOADED else 0.0)!r}\\n' for _ in rows)\n"
)
# The script hangs when it finds `decimal` already imported, so only its warm run hangs.
HANGS_WARM = (
    "import sys\nimport time\n\n"
    "if 'decimal' in sys.modules:\n    time.sleep(600)\n\n"
    "import decimal  # noqa\n\n"
    "rows = list(open(sys.argv[1]))[1:]\n"
    "with open(sys.argv[2], 'w') as handle:\n"
    "    handle.write('value\\n')\n"
    "    handle.writelines('1.0\\n' for _ in rows)\n"
)


def legacy_model(root: Path, model_id: str, script: str) -> Path:
    return write_tree(
        root / model_id,
        {
            "metadata.yml": f"Identifier: {model_id}\nSlug: {model_id}\n",
            "model/framework/run.sh": "python $1/code/main.py $2 $3\n",
            "model/framework/code/main.py": script,
            "model/framework/columns/run_columns.csv": (
                "name,type,direction,description\nvalue,float,,a number\n"
            ),
            "model/framework/examples/run_input.csv": "input\na\nb\n",
            "model/framework/examples/run_output.csv": "value\n1.0\n1.0\n",
        },
    )


def test_a_warm_run_off_by_one_part_in_a_billion_runs_cold(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = legacy_model(tmp_path, "nearly-equal", NEARLY)
    with caplog.at_level(logging.INFO, logger="ersilia_pack"):
        bundle = pack(source, backend="system", repository_root=tmp_path / "repo").bundle_dir

    api = load_bundle(bundle).apis["run"]
    assert api.warm_script == "code/main.py"
    assert api.decided.warm is False
    assert "run cannot run warm in forked children: its warm run differs" in caplog.text
    assert "run runs cold: its in-process warm run differs from the cold run" in caplog.text
    with app_client(bundle) as client:  # served cold: exactly the cold answer
        assert client.post("/run", json=["x"]).json() == [{"value": 1.0}]


def test_a_warm_run_that_hangs_falls_back_to_cold_with_the_reason(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    source = legacy_model(tmp_path, "hangs-warm", HANGS_WARM)
    monkeypatch.setattr("ersilia_pack.check.WARM_CHECK_MIN_SECONDS", 2.0)
    with caplog.at_level(logging.INFO, logger="ersilia_pack"):
        bundle = pack(source, backend="system", repository_root=tmp_path / "repo").bundle_dir

    assert load_bundle(bundle).apis["run"].decided.warm is False
    # Ten times the cold run, at least 2 s here: the warm runner's warm-up (which runs the
    # script) or its run, whichever hangs, is given up on within that time.
    reason = re.search(
        r"run runs cold: its in-process warm run (did not finish|failed \(.*) within (\d+) s",
        caplog.text,
    )
    assert reason is not None, caplog.text
    assert int(reason.group(2)) >= 2


def test_a_script_whose_warm_run_agrees_runs_warm_and_in_parallel(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="ersilia_pack"):
        bundle = pack(
            FIXTURES / "stdlib-simple", backend="system", repository_root=tmp_path
        ).bundle_dir

    api = load_bundle(bundle).apis["run"]
    assert (api.decided.warm, api.decided.serial) == (True, False)
    assert "run runs warm: its warm run matches the cold run" in caplog.text
    assert "one run at a time" not in caplog.text
