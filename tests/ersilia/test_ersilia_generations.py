"""Both generations of Ersilia model repositories, packed and served through the real console
scripts and called exactly as the Ersilia client calls them."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
from pathlib import Path

import pytest
from client_checks import (
    ADDED_BY_OTHER_TOOLS,
    assert_bundle_for_the_client,
    assert_serves_like_the_client,
    card_of,
    check_python_warning,
    packed_into,
)
from fixture_models import MODEL_IDS, NEWER, OLDER, ContainerPython, console_script, with_conda_step
from like_client import run_script, serving

pytestmark = pytest.mark.slow
GENERATIONS = [NEWER, OLDER]
IDS = ["install.yml", "Dockerfile"]


@pytest.mark.parametrize("model_dir", GENERATIONS, ids=IDS)
def test_ersilia_model_pack_then_ersilia_model_serve(model_dir: Path, tmp_path: Path) -> None:
    """The client's own commands, with the default backend (a venv beside the bundles)."""
    bundles = tmp_path / "bundles"
    pack_args = ("--repo_path", model_dir, "--bundles_repo_path", bundles)
    first = run_script(console_script("ersilia_model_pack"), *pack_args)
    assert first.returncode == 0, first.stderr
    check_python_warning(model_dir, "venv", first.stderr)
    assert_bundle_for_the_client(packed_into(first.stdout), model_dir)

    second = run_script(console_script("ersilia_model_pack"), *pack_args)
    assert second.returncode == 0, second.stderr
    assert "reusing environment" in second.stderr
    newest = packed_into(second.stdout)
    model_folder = bundles / MODEL_IDS[model_dir]
    # How the client finds the bundle: the last name of the sorted listing.
    listing = sorted(os.listdir(model_folder))
    assert listing == [".envs", packed_into(first.stdout).name, newest.name]
    assert listing[-1] == newest.name

    for name, text in ADDED_BY_OTHER_TOOLS.items():
        (newest / name).write_text(text)
    with serving(
        console_script("ersilia_model_serve"), "--bundle_path", model_folder, "--port", "0"
    ) as url:
        assert_serves_like_the_client(url, model_dir, newest)


@pytest.mark.parametrize("model_dir", GENERATIONS, ids=IDS)
def test_ersilia_pack_venv_then_ersilia_serve(model_dir: Path, tmp_path: Path) -> None:
    eos = tmp_path / "eos"
    done = run_script(
        console_script("ersilia_pack"), "--model_dir", model_dir, "--venv", "--eos", eos
    )
    assert done.returncode == 0, done.stderr
    check_python_warning(model_dir, "venv", done.stderr)
    bundle = packed_into(done.stdout)
    assert bundle.parent == eos / "repository" / MODEL_IDS[model_dir]
    assert_bundle_for_the_client(bundle, model_dir)
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert Path(manifest["environment"]["prefix"]).parent == bundle.parent / ".envs"
    with serving(
        console_script("ersilia_serve"), "--repository_dir", bundle.parent, "--port", "0"
    ) as url:
        assert_serves_like_the_client(url, model_dir, bundle)


@pytest.mark.parametrize(
    ("model_dir", "pack_script", "serve_args"),
    [
        (
            NEWER,
            "ersilia_model_pack",
            ("ersilia_model_serve", "--bundle_path", "--root_path", "/models/eos9ym1"),
        ),
        (OLDER, "ersilia_pack", ("ersilia_serve", "--repository_dir")),
    ],
    ids=IDS,
)
def test_system_installs_into_the_python_running_ersilia_pack(
    model_dir: Path,
    pack_script: str,
    serve_args: tuple[str, ...],
    container_python: ContainerPython,
    tmp_path: Path,
) -> None:
    """--system, as in a container: the model's dependency goes into the interpreter that runs
    ersilia-pack (here a container-like Python), and the model runs on it."""
    assert importlib.util.find_spec("fixture_helper") is None  # only an install provides it
    root = tmp_path / "bundles"
    if pack_script == "ersilia_model_pack":
        args: tuple[str | Path, ...] = (
            "--repo_path",
            model_dir,
            "--bundles_repo_path",
            root,
            "--system",
        )
    else:
        args = ("--model_dir", model_dir, "--system", "--eos", tmp_path / "eos")
        root = tmp_path / "eos" / "repository"
    done = run_script(container_python.script(pack_script), *args)
    assert done.returncode == 0, done.stderr
    check_python_warning(model_dir, "system", done.stderr)
    bundle = packed_into(done.stdout)
    assert bundle.parent == root / MODEL_IDS[model_dir]
    assert_bundle_for_the_client(bundle, model_dir)
    installed = list(
        container_python.prefix.glob("lib/python*/site-packages/fixture_helper/__init__.py")
    )
    assert len(installed) == 1
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["environment"]["python"] == str(container_python.python)

    serve_script, path_option, *extra = serve_args
    with serving(
        container_python.script(serve_script), path_option, bundle.parent, "--port", "0", *extra
    ) as url:
        assert_serves_like_the_client(url, model_dir, bundle)


@pytest.mark.parametrize("model_dir", GENERATIONS, ids=IDS)
@pytest.mark.parametrize("backend", ["--venv", "--system"])
def test_a_conda_step_without_conda_stops_the_pack_before_anything_runs(
    model_dir: Path, backend: str, tmp_path: Path
) -> None:
    source = with_conda_step(model_dir, tmp_path / "model")
    eos = tmp_path / "eos"
    done = run_script(console_script("ersilia_pack"), "--model_dir", source, backend, "--eos", eos)
    assert done.returncode == 1
    step = "install.yml command 3" if model_dir == NEWER else "Dockerfile line 8"
    assert f"install step '{step}' is a conda step" in done.stderr
    assert "conda install -c conda-forge fixture-extras=1.0 -y" in done.stderr
    assert f"{backend} cannot run: pack with --conda" in done.stderr
    assert "install 1/" not in done.stderr
    assert not eos.exists() or not any(eos.rglob("*"))


def test_ersilia_model_pack_without_a_conda_env_name_refuses_conda_steps(tmp_path: Path) -> None:
    source = with_conda_step(OLDER, tmp_path / "model")
    bundles = tmp_path / "bundles"
    done = run_script(
        console_script("ersilia_model_pack"), "--repo_path", source, "--bundles_repo_path", bundles
    )
    assert done.returncode == 1
    assert "install step 'Dockerfile line 8' is a conda step" in done.stderr
    assert "pack with --conda" in done.stderr
    assert not (bundles / MODEL_IDS[OLDER]).exists()


@pytest.mark.parametrize("model_dir", GENERATIONS, ids=IDS)
def test_ersilia_model_lint_accepts_both_generations(model_dir: Path) -> None:
    done = run_script(console_script("ersilia_model_lint"), "--repo_path", model_dir)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"{MODEL_IDS[model_dir]} ({card_of(model_dir)['Slug']}) is valid")


def test_ersilia_model_lint_reports_every_problem_at_once(tmp_path: Path) -> None:
    broken = tmp_path / "broken"
    shutil.copytree(NEWER, broken)
    metadata = broken / "metadata.yml"
    metadata.write_text(metadata.read_text().replace("Slug: smiles-counts-yml\n", ""))
    columns = broken / "model" / "framework" / "columns" / "run_columns.csv"
    columns.write_text(columns.read_text().replace("heavy_atoms,integer", "heavy_atoms,count"))
    outputs = broken / "model" / "framework" / "examples" / "run_output.csv"
    outputs.write_text("".join(outputs.read_text().splitlines(keepends=True)[:-1]))
    install = broken / "install.yml"
    install.write_text(install.read_text() + '  - ["npm", "install", "left-pad"]\n')

    done = run_script(console_script("ersilia_model_lint"), "--repo_path", broken)
    assert done.returncode == 1
    for expected in [
        "4 problems",
        "metadata.yml: 'Slug' is missing",
        "model/framework/columns/run_columns.csv: line 2: type 'count' of column 'heavy_atoms'",
        "model/framework/examples/run_output.csv: has 4 rows but the example input has 5",
        "install.yml: command 3 is ['npm', 'install', 'left-pad']",
    ]:
        assert expected in done.stderr
