"""Conda steps under --venv and --system: a package with a pip name of its own is installed
with pip from a local index, a C library that wheels carry is skipped, a program is looked for
on PATH (missing: the pack stops before installing anything), every decision is printed under
its step and kept in the manifest, and the example check proves the result. --conda still runs
conda (here the conda stand-in, tests/standins/conda)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
from container import make_container_python
from helpers import FIXTURES, ROOT, run_command

pytestmark = pytest.mark.slow
YML = FIXTURES / "conda-translated"
DOCKERFILE = FIXTURES / "conda-translated-dockerfile"
SKIP_NOTE = "skipped: a C library that pip wheels carry inside them"


def _manifest(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.returncode == 0, done.stderr
    bundle = Path(done.stdout.strip().rsplit(" into ", 1)[1])
    manifest: dict[str, Any] = json.loads((bundle / "manifest.json").read_text())
    return manifest


def _installed(python: str) -> str:
    done = subprocess.run(
        [python, "-c", "import openbabel_wheel; print(openbabel_wheel.VERSION)"],
        capture_output=True,
        text=True,
        check=True,
    )
    return done.stdout.strip()


def _path_without(program: str) -> str:
    folders = os.environ["PATH"].split(os.pathsep)
    return os.pathsep.join(f for f in folders if not (Path(f) / program).exists())


def test_venv_turns_conda_steps_into_pip_installs_and_skips(
    eos: Path, index_env: dict[str, str]
) -> None:
    done = run_command(
        "ersilia_pack", "--model_dir", YML, "--venv", "--eos", eos, "--strict", env=index_env
    )

    manifest = _manifest(done)
    assert (
        "step install.yml command 1: conda openbabel=3.1.1 -> pip install openbabel-wheel==3.1.1.*"
    ) in done.stderr
    assert f"step install.yml command 2: conda expat=2.5.0 -> {SKIP_NOTE}" in done.stderr
    assert "example check passed for run" in done.stderr
    # as of the card's date, 3.1.1.22 is the newest 3.1.1 (3.2.0 does not match conda's =3.1.1)
    assert _installed(manifest["environment"]["python"]) == "3.1.1.22"
    assert manifest["install"]["steps"] == ["pip install 'openbabel-wheel==3.1.1.*'"]
    assert manifest["install"]["conda_translation"] == [
        {
            "step": "install.yml command 1",
            "conda": "openbabel=3.1.1",
            "action": "pip",
            "pip": "openbabel-wheel==3.1.1.*",
            "note": "",
        },
        {
            "step": "install.yml command 2",
            "conda": "expat=2.5.0",
            "action": "skip",
            "pip": "",
            "note": "a C library that pip wheels carry inside them",
        },
    ]
    bundle_script = (eos / "repository" / "conda-translated").glob("2*/installs/install.sh")
    assert "pip install 'openbabel-wheel==3.1.1.*'" in next(bundle_script).read_text()


def test_a_translation_that_does_not_reproduce_the_examples_fails_with_strict(
    eos: Path, index_env: dict[str, str]
) -> None:
    # as of 2024-01-01 pip finds openbabel-wheel 3.1.1.5, not the 3.1.1.22 the examples show
    args = ["--model_dir", YML, "--venv", "--eos", eos, "--as-of", "2024-01-01"]

    strict = run_command("ersilia_pack", *args, "--strict", env=index_env)
    assert strict.returncode == 4, strict.stderr
    assert "the packed model does not reproduce its examples" in strict.stderr
    assert not (eos / "repository" / "conda-translated").exists()

    lenient = run_command("ersilia_pack", *args, env=index_env)
    manifest = _manifest(lenient)
    assert "the packed model's output differs from its example output" in lenient.stderr
    assert _installed(manifest["environment"]["python"]) == "3.1.1.5"


def test_system_translates_a_dockerfile_and_finds_the_program_on_path(
    tmp_path: Path, eos: Path, index_env: dict[str, str]
) -> None:
    script = make_container_python(tmp_path / "container")
    standin = tmp_path / "standin-bin"
    standin.mkdir()
    java = standin / "java"  # a stand-in: only its presence on PATH is checked
    java.write_text("#!/bin/sh\necho 'java stand-in'\n")
    java.chmod(0o755)
    env = {**index_env, "PATH": f"{standin}{os.pathsep}{os.environ['PATH']}"}

    done = subprocess.run(
        [
            *[str(script), "--model_dir", str(DOCKERFILE), "--system", "--eos", str(eos)],
            *["--strict", "--installer", "uv"],
        ],
        capture_output=True,
        text=True,
        env={**os.environ, **env},
        timeout=300,
        check=False,
    )

    manifest = _manifest(done)
    assert (
        "step Dockerfile line 4: conda openbabel=3.1.1 -> pip install openbabel-wheel==3.1.1.*"
    ) in done.stderr
    assert f"step Dockerfile line 4: conda expat -> {SKIP_NOTE}" in done.stderr
    assert f"step Dockerfile line 5: conda openjdk=11 -> the program java is on PATH ({java})" in (
        done.stderr
    )
    assert manifest["environment"]["backend"] == "system"
    assert _installed(str(tmp_path / "container" / "bin" / "python")) == "3.1.1.22"
    assert [d["action"] for d in manifest["install"]["conda_translation"]] == [
        "pip",
        "skip",
        "program",
    ]


@pytest.mark.parametrize("backend", ["--venv", "--system"])
def test_a_missing_program_stops_the_pack_before_anything_is_installed(
    backend: str, eos: Path, index_env: dict[str, str]
) -> None:
    env = {**index_env, "PATH": _path_without("java")}

    done = run_command("ersilia_pack", "--model_dir", DOCKERFILE, backend, "--eos", eos, env=env)

    assert done.returncode == 1, done.stderr
    assert (
        "install step 'Dockerfile line 5' needs the program java (conda package openjdk=11), "
        "which is not on PATH: install it (e.g. apt-get install default-jre-headless) or pack "
        "with --conda"
    ) in done.stderr
    assert "install 1/" not in done.stderr
    assert "Traceback" not in done.stderr
    assert not eos.exists()


def test_conda_still_runs_conda_steps_with_conda(tmp_path: Path, eos: Path) -> None:
    root = tmp_path / "conda-standin"
    root.mkdir()
    env = {
        "CONDA_EXE": str(ROOT / "tests" / "standins" / "conda"),
        "CONDA_STANDIN_ROOT": str(root),
    }

    done = run_command(
        "ersilia_pack", "--model_dir", YML, "--conda", "--eos", eos, "--no-check", env=env
    )

    manifest = _manifest(done)
    calls = [json.loads(line)["argv"] for line in (root / "calls.jsonl").read_text().splitlines()]
    assert ["install", "-n", "conda-translated", "-c", "conda-forge", "openbabel=3.1.1", "-y"] in (
        calls
    )
    assert ["install", "-n", "conda-translated", "-c", "conda-forge", "expat=2.5.0", "-y"] in calls
    assert manifest["install"]["conda_translation"] == []
    assert "->" not in done.stderr
