"""--conda with tests/standins/conda, a stand-in executable that answers ersilia-pack's conda
calls and makes plain virtual environments (conda itself cannot be installed here)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from client_checks import assert_bundle_for_the_client, assert_serves_like_the_client, packed_into
from fixture_models import MODEL_IDS, NEWER, OLDER, CondaStandin, console_script, with_conda_step
from like_client import run_script, serving

pytestmark = pytest.mark.slow
ENV_LIST = ["env", "list", "--json"]
CONDA_STEP = ["-c", "conda-forge", "fixture-extras=1.0", "-y"]


def _helper_installed_in(prefix: Path) -> bool:
    return len(list(prefix.glob("lib/python*/site-packages/fixture_helper/__init__.py"))) == 1


def test_conda_standin_env_named_after_the_model_with_its_python_reused_on_repack(
    conda_standin: CondaStandin, tmp_path: Path
) -> None:
    assert importlib.util.find_spec("fixture_helper") is None  # only the env has it
    source = with_conda_step(NEWER, tmp_path / "model")
    eos = tmp_path / "eos"
    first = run_script(
        console_script("ersilia_pack"),
        "--model_dir",
        source,
        "--conda",
        "--eos",
        eos,
        env=conda_standin.env,
    )
    assert first.returncode == 0, first.stderr
    assert conda_standin.calls() == [
        ENV_LIST,
        ["create", "-y", "-n", "eos9ym1", "python=3.10"],
        ENV_LIST,
        ["install", "-n", "eos9ym1", *CONDA_STEP],
    ]
    assert "asks for Python" not in first.stderr
    prefix = conda_standin.prefix("eos9ym1")
    assert _helper_installed_in(prefix)
    bundle = packed_into(first.stdout)
    assert_bundle_for_the_client(bundle, NEWER)
    environment = json.loads((bundle / "manifest.json").read_text())["environment"]
    assert environment["backend"] == "conda"
    assert environment["python"] == str(prefix / "bin" / "python")
    assert environment["python_version"] == "3.10"

    second = run_script(
        console_script("ersilia_pack"),
        "--model_dir",
        source,
        "--conda",
        "--eos",
        eos,
        env=conda_standin.env,
    )
    assert second.returncode == 0, second.stderr
    assert conda_standin.calls()[4:] == [ENV_LIST, ["install", "-n", "eos9ym1", *CONDA_STEP]]
    newest = packed_into(second.stdout)

    # Serving needs no conda: the model runs on the environment's interpreter directly.
    with serving(
        console_script("ersilia_serve"),
        "--repository_dir",
        eos / "repository" / "eos9ym1",
        "--port",
        "0",
    ) as url:
        assert_serves_like_the_client(url, NEWER, newest)
    assert len(conda_standin.calls()) == 6


def test_conda_standin_ersilia_model_pack_with_a_conda_env_name(
    conda_standin: CondaStandin, tmp_path: Path
) -> None:
    source = with_conda_step(OLDER, tmp_path / "model")
    bundles = tmp_path / "bundles"
    done = run_script(
        console_script("ersilia_model_pack"),
        "--repo_path",
        source,
        "--bundles_repo_path",
        bundles,
        "--conda_env_name",
        "fixture-env",
        env=conda_standin.env,
    )
    assert done.returncode == 0, done.stderr
    assert conda_standin.calls() == [
        ENV_LIST,
        ["create", "-y", "-n", "fixture-env", "python=3.11"],
        ENV_LIST,
        ["install", "-n", "fixture-env", *CONDA_STEP],
    ]
    assert _helper_installed_in(conda_standin.prefix("fixture-env"))
    assert not conda_standin.prefix(MODEL_IDS[OLDER]).exists()
    bundle = packed_into(done.stdout)
    assert bundle.parent == bundles / MODEL_IDS[OLDER]
    assert_bundle_for_the_client(bundle, OLDER)
    with serving(
        console_script("ersilia_model_serve"), "--bundle_path", bundle.parent, "--port", "0"
    ) as url:
        assert_serves_like_the_client(url, OLDER, bundle)


def test_conda_standin_env_made_by_the_client_before_it_packs_is_used_as_it_is(
    conda_standin: CondaStandin, tmp_path: Path
) -> None:
    """The Ersilia client creates the model's environment itself, then packs inside it."""
    conda_standin.create(MODEL_IDS[OLDER], "3.11")
    before = len(conda_standin.calls())
    done = run_script(
        console_script("ersilia_model_pack"),
        "--repo_path",
        OLDER,
        "--bundles_repo_path",
        tmp_path / "bundles",
        "--conda_env_name",
        MODEL_IDS[OLDER],
        env=conda_standin.env,
    )
    assert done.returncode == 0, done.stderr
    assert conda_standin.calls()[before:] == [ENV_LIST]
    assert _helper_installed_in(conda_standin.prefix(MODEL_IDS[OLDER]))
