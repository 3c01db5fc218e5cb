"""The pieces of an install plan decided before anything runs: conda specs as pip
requirements, the cut-off date and its variables, what counts as a resolution failure, and
where uv keeps its cache."""

from __future__ import annotations

import datetime as dt
import os
from pathlib import Path

import pytest
from helpers import write_tree

from ersilia_pack.errors import PlanError
from ersilia_pack.install.cutoff import choose_cutoff
from ersilia_pack.install.installer import failed_to_resolve, make_installer
from ersilia_pack.install.plan import InstallStep
from ersilia_pack.install.translate import _decide, table


@pytest.mark.parametrize(
    ("spec", "action", "pip"),
    [
        ("rdkit=2023.09.1", "pip", "rdkit==2023.09.1.*"),
        ("numpy==1.26.4", "pip", "numpy==1.26.4"),
        ("pandas>=1.5,<2", "pip", "pandas>=1.5,<2"),
        ("conda-forge::scikit-learn=1.3", "pip", "scikit-learn==1.3.*"),
        ("pytorch=2.1.0=py3.10_cpu_0", "pip", "torch==2.1.0.*"),
        ("openbabel", "pip", "openbabel-wheel"),
        ("hdf5=1.14", "skip", ""),
        ("python=3.10", "skip", ""),
    ],
)
def test_conda_specs_become_pip_requirements(spec: str, action: str, pip: str) -> None:
    step = InstallStep(name="install.yml command 1", kind="conda", args=[spec, "-y"])
    decision = _decide(step, spec, "venv")
    assert (decision.action, decision.pip) == (action, pip)


def test_an_unknown_conda_package_names_the_step_and_the_way_out() -> None:
    step = InstallStep(name="Dockerfile line 7", kind="conda", args=["-c", "bioconda", "x", "-y"])
    with pytest.raises(PlanError) as raised:
        _decide(step, "x", "system")
    assert raised.value.render() == (
        "install step 'Dockerfile line 7' is a conda step (conda install -c bioconda x -y), "
        "which --system cannot run: pack with --conda (ersilia-pack knows no pip package for "
        "conda's x; its table is ersilia_pack/install/conda_to_pip.json)"
    )


def test_the_table_names_each_package_once() -> None:
    data = table()
    pip, skip, program = set(data["pip"]), set(data["skip"]), set(data["program"])
    assert not (pip & skip or pip & program or skip & program)
    assert data["pip"]["openbabel"] == "openbabel-wheel"
    assert data["program"]["openjdk"]["program"] == "java"


@pytest.mark.parametrize(
    ("card", "as_of", "iso", "source", "reason"),
    [
        (
            {"Last Packaging Date": "2025-10-22"},
            None,
            "2025-10-22T00:00:00Z",
            "card",
            "the model card's 'Last Packaging Date'",
        ),
        ({"Last Packaging Date": "2025-10-22"}, "latest", None, "flag", "--as-of latest"),
        (
            {"Last Packaging Date": "2025-10-22"},
            "2024-01-31",
            "2024-01-31T00:00:00Z",
            "flag",
            "--as-of",
        ),
        ({}, "2024-01-31T12:30:00+02:00", "2024-01-31T10:30:00Z", "flag", "--as-of"),
        ({}, None, None, "latest", "the model card has no 'Last Packaging Date'"),
    ],
)
def test_the_cut_off_comes_from_as_of_or_the_card(
    card: dict[str, str], as_of: str | None, iso: str | None, source: str, reason: str
) -> None:
    cutoff = choose_cutoff(card, as_of)
    assert cutoff.iso == iso
    assert (cutoff.source, cutoff.reason) == (source, reason)
    variables = {"UV_EXCLUDE_NEWER": iso, "PIP_UPLOADED_PRIOR_TO": iso} if iso else {}
    assert cutoff.variables() == variables


def _dated_model(root: Path, moment: dt.datetime) -> Path:
    """A model folder outside any git checkout whose files were all last changed at
    ``moment``."""
    model = write_tree(root / "model", {"metadata.yml": "Identifier: x\n", "model/run.sh": ""})
    for path in model.rglob("*"):
        os.utime(path, (moment.timestamp(), moment.timestamp()))
    return model


@pytest.fixture
def outside_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``tmp_path``, above which git does not look for a repository."""
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    return tmp_path


def test_without_a_card_date_the_files_date_is_the_cut_off(outside_git: Path) -> None:
    model = _dated_model(outside_git, dt.datetime(2024, 8, 1, 12, tzinfo=dt.timezone.utc))
    cutoff = choose_cutoff({}, None, model_dir=model)
    assert (cutoff.iso, cutoff.source) == ("2024-08-01T12:00:00Z", "files")
    assert cutoff.reason == (
        "the model card has no 'Last Packaging Date': the newest modification time of the "
        "model's files, metadata.yml"
    )
    # the card and --as-of still win
    assert choose_cutoff({"Last Packaging Date": "2023-01-01"}, None, model_dir=model).source == (
        "card"
    )
    assert choose_cutoff({}, "latest", model_dir=model).iso is None


def test_files_dated_in_the_future_leave_the_newest_packages(outside_git: Path) -> None:
    now = dt.datetime(2026, 1, 1, tzinfo=dt.timezone.utc)
    model = _dated_model(outside_git, now + dt.timedelta(days=3))
    cutoff = choose_cutoff({}, None, model_dir=model, now=now)
    assert (cutoff.iso, cutoff.source) == (None, "latest")
    assert "nor a git commit or file modification time in the past" in cutoff.reason


def test_a_card_date_that_is_not_a_date_is_reported_with_the_fix() -> None:
    with pytest.raises(PlanError, match=r"'Last Packaging Date' is 'soon', not a date"):
        choose_cutoff({"Last Packaging Date": "soon"}, None)


@pytest.mark.parametrize(
    ("output", "resolution"),
    [
        ("ERROR: No matching distribution found for beta==2.0", True),
        ("  x No solution found when resolving dependencies:", True),
        ("Because there is no version of beta==2.0 and you require beta==2.0", True),
        ("error: Failed to build `thing==1.0`", False),
        ("ModuleNotFoundError: No module named 'setuptools'", False),
    ],
)
def test_only_resolution_failures_are_retried_without_the_cut_off(
    output: str, resolution: bool
) -> None:
    assert failed_to_resolve(output) is resolution


def test_uv_uses_the_cache_it_is_told_to_and_hard_links_on_one_filesystem(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("UV_CACHE_DIR", str(tmp_path / "cache"))
    installer = make_installer("uv", near=tmp_path / "eos" / "repository")
    assert Path(str(installer.uv)).is_file()
    assert installer.variables() == {
        "UV_CACHE_DIR": str(tmp_path / "cache"),
        "UV_LINK_MODE": "hardlink",
    }
    assert make_installer("pip", near=tmp_path).variables() == {}
