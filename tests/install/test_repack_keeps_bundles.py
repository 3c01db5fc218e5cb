"""A repack never breaks an earlier bundle: --force makes a new environment beside the one
earlier bundles use, a failing install step removes only what its own pack made, and with
--conda a pack that would change an environment in use installs into one of its own. Each
earlier bundle is then served by the real ersilia_serve and answers right."""

from __future__ import annotations

import json
import shutil
import subprocess
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from helpers import FIXTURES, ROOT, run_command, served

pytestmark = pytest.mark.slow
RIGHT = [{"alpha": "2.0", "beta": "2.0"}, {"alpha": "2.0", "beta": "2.0"}]
# an index nobody listens on: every resolution fails, as when the network is down
DEAD_INDEX = {
    "UV_DEFAULT_INDEX": "http://127.0.0.1:9/simple",
    "UV_INDEX_URL": "http://127.0.0.1:9/simple",
    "PIP_INDEX_URL": "http://127.0.0.1:9/simple",
    "UV_HTTP_RETRIES": "0",
}


def _post(url: str, payload: Any) -> tuple[int, Any]:
    request = urllib.request.Request(
        url, data=json.dumps(payload).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        return response.status, json.loads(response.read())


def _bundle(done: subprocess.CompletedProcess[str]) -> Path:
    assert done.returncode == 0, done.stderr
    return Path(done.stdout.strip().rsplit(" into ", 1)[1])


def _prefix(bundle: Path) -> Path:
    return Path(json.loads((bundle / "manifest.json").read_text())["environment"]["prefix"])


def _serves_right(bundle: Path) -> None:
    with served(bundle, "--workers", "1") as url:
        assert _post(f"{url}/run", ["first", "second"]) == (200, RIGHT)


def _failing_copy(tmp_path: Path) -> Path:
    """The model with one more install step, which fails."""
    model = shutil.copytree(FIXTURES / "install-as-of", tmp_path / "model")
    with (model / "install.yml").open("a") as handle:
        handle.write('  - "echo weights server unreachable >&2; exit 7"\n')
    return model


def test_venv_force_and_failing_repacks_leave_earlier_bundles_serving(
    tmp_path: Path, eos: Path, index_env: dict[str, str]
) -> None:
    model = FIXTURES / "install-as-of"
    pack = ["--model_dir", model, "--venv", "--eos", eos]
    first = _bundle(run_command("ersilia_pack", *pack, env=index_env))
    forced = _bundle(run_command("ersilia_pack", *pack, "--force", env=index_env))

    # --force rebuilt the environment beside the first one, which the first bundle still uses
    assert _prefix(forced) != _prefix(first)
    assert _prefix(forced).parent == _prefix(first).parent
    assert (_prefix(first) / "bin" / "python").exists()

    dead = {**index_env, **DEAD_INDEX}
    failed_force = run_command("ersilia_pack", *pack, "--force", env=dead)
    assert failed_force.returncode == 3, failed_force.stderr
    assert "install step 'install.yml command 1' failed" in failed_force.stderr
    failed_step = run_command(
        "ersilia_pack",
        "--model_dir",
        _failing_copy(tmp_path),
        "--venv",
        "--eos",
        eos,
        env=index_env,
    )
    assert failed_step.returncode == 3, failed_step.stderr
    assert "install step 'install.yml command 3' failed: exited with 7" in failed_step.stderr

    repository = eos / "repository" / "install-as-of"
    assert sorted(p.name for p in repository.iterdir()) == sorted(
        [".envs", first.name, forced.name]
    )
    assert sorted((repository / ".envs").iterdir()) == sorted([_prefix(first), _prefix(forced)])
    _serves_right(first)
    _serves_right(forced)


def test_conda_repacks_that_would_change_an_environment_in_use_get_their_own(
    tmp_path: Path, eos: Path, index_env: dict[str, str]
) -> None:
    root = tmp_path / "conda-standin"
    root.mkdir()
    env = {
        **index_env,
        "CONDA_EXE": str(ROOT / "tests" / "standins" / "conda"),
        "CONDA_STANDIN_ROOT": str(root),
    }
    pack = ["--model_dir", FIXTURES / "install-as-of", "--conda", "--eos", eos]
    first = _bundle(run_command("ersilia_pack", *pack, env=env))
    repeated = run_command("ersilia_pack", *pack, env=env)
    again = _bundle(repeated)
    forced = run_command("ersilia_pack", *pack, "--force", env=env)
    failed = run_command(
        "ersilia_pack",
        "--model_dir",
        _failing_copy(tmp_path),
        "--conda",
        "--eos",
        eos,
        env=env,
    )

    # the same plan again shares the environment; --force gets one of its own
    assert _prefix(again) == _prefix(first) == root / "envs" / "install-as-of"
    assert "serves earlier bundles" not in repeated.stderr
    forced_prefix = _prefix(_bundle(forced))
    assert forced_prefix.parent == root / "envs"
    assert forced_prefix.name.startswith("install-as-of-")
    assert "and --force: installing into conda environment install-as-of-" in forced.stderr
    # a failing pack of another plan ran in an environment of its own, not in the shared one
    assert failed.returncode == 3, failed.stderr
    assert "this pack installs another plan: installing into conda environment" in failed.stderr
    _serves_right(first)
    _serves_right(again)
