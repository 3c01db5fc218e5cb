"""The backend flags of ersilia_pack and ersilia_model_pack: one at a time."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import DEMO_DIR, run_command


@pytest.mark.parametrize(
    "command, target",
    [("ersilia_pack", "--model_dir"), ("ersilia_model_pack", "--repo_path")],
)
def test_two_backends_at_once_is_a_usage_error(tmp_path: Path, command: str, target: str) -> None:
    extra = ["--bundles_repo_path", str(tmp_path)] if command == "ersilia_model_pack" else []
    result = run_command(command, target, DEMO_DIR, *extra, "--system", "--conda")
    assert result.returncode == 1
    assert "choose one backend, not --system and --conda" in result.stderr
    assert "Traceback" not in result.stderr
    assert list(tmp_path.iterdir()) == []
