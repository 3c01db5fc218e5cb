"""No command prints a warning: the console scripts run as processes with every warning shown
(the environment variable, the interpreter flag, and development mode), and what they write on
stderr is only what they mean to say."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import console_script

SCRIPTS = [
    ["ersilia_pack"],
    ["ersilia_pack", "run"],
    ["ersilia_pack", "containerize"],
    ["ersilia_serve"],
    ["ersilia_model_pack"],
    ["ersilia_model_serve"],
    ["ersilia_model_lint"],
]
# How warnings are asked for: each way shows every warning at least once, ignored ones included.
WARNINGS = {
    "PYTHONWARNINGS=default": ([], {"PYTHONWARNINGS": "default"}),
    "-W default": (["-W", "default"], {}),
    "-X dev": (["-X", "dev"], {}),
}


def _run(way: str, script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """``script`` from the interpreter's bin folder, run with warnings shown ``way``."""
    flags, variables = WARNINGS[way]
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in ("PYTHONWARNINGS", "PYTHONDEVMODE")
    }
    return subprocess.run(
        [sys.executable, *flags, console_script(script), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**env, **variables},
        stdin=subprocess.DEVNULL,
        check=False,
    )


@pytest.mark.parametrize("way", list(WARNINGS))
@pytest.mark.parametrize("command", SCRIPTS, ids=" ".join)
def test_help_prints_no_warning(command: list[str], way: str) -> None:
    result = _run(way, *command, "--help")
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout.startswith(f"Usage: {' '.join(command)} [OPTIONS]")


@pytest.mark.parametrize("way", list(WARNINGS))
def test_serving_a_missing_folder_says_only_what_is_wrong(way: str, tmp_path: Path) -> None:
    missing = tmp_path / "no-such-model"
    result = _run(way, "ersilia_serve", "--repository_dir", str(missing))
    assert result.returncode == 1
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"error: {missing} does not exist or is not a folder: pass a model's repository "
        "folder ($EOS/repository/MODEL_ID) or a bundle in it"
    ]
