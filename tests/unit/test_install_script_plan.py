"""Install plans from install.sh and its install_<variant>.sh variants."""

from __future__ import annotations

from pathlib import Path

from helpers import write_tree

from ersilia_pack.errors import Problem
from ersilia_pack.install.plan import read_plan

INSTALL_SH = "# the model's dependencies\npip install rdkit==2023.9.1\npip install numpy\n"


def test_install_sh_is_one_bash_step_kept_as_written(tmp_path: Path) -> None:
    write_tree(tmp_path, {"install.sh": INSTALL_SH})
    problems: list[Problem] = []

    plan = read_plan(tmp_path, problems)

    assert problems == []
    assert plan.source == "install.sh"
    assert plan.python is None
    [step] = plan.steps
    assert (step.name, step.kind, step.script) == ("install.sh", "bash", INSTALL_SH)
    script = plan.as_script()
    assert script.startswith("#!/usr/bin/env bash\n# install plan from install.sh\n")
    assert "pip install rdkit==2023.9.1\npip install numpy" in script


def test_an_empty_install_sh_has_no_steps(tmp_path: Path) -> None:
    write_tree(tmp_path, {"install.sh": "\n  \n"})

    plan = read_plan(tmp_path, [])

    assert (plan.source, plan.steps) == ("install.sh", [])


def test_no_install_file_is_an_empty_plan(tmp_path: Path) -> None:
    problems: list[Problem] = []

    plan = read_plan(tmp_path, problems)

    assert (plan.source, plan.steps, problems) == ("", [], [])


def test_variant_picks_its_own_script(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {"install.sh": INSTALL_SH, "install_gpu.sh": "pip install torch --index-url gpu\n"},
    )
    problems: list[Problem] = []

    plan = read_plan(tmp_path, problems, variant="gpu")

    assert problems == []
    assert plan.source == "install_gpu.sh"
    [step] = plan.steps
    assert step.script == "pip install torch --index-url gpu\n"


def test_without_variant_the_plain_script_is_used(tmp_path: Path) -> None:
    write_tree(tmp_path, {"install.sh": INSTALL_SH, "install_gpu.sh": "pip install torch\n"})

    assert read_plan(tmp_path, []).source == "install.sh"


def test_a_missing_variant_is_reported(tmp_path: Path) -> None:
    write_tree(tmp_path, {"install.sh": INSTALL_SH})
    problems: list[Problem] = []

    read_plan(tmp_path, problems, variant="gpu")

    assert [str(problem) for problem in problems] == [
        "install_gpu.sh: is missing, but variant 'gpu' was asked for "
        "(add the file or drop --variant)"
    ]
