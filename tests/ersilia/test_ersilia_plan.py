"""Install plans of the shapes published Ersilia models use, and the exact command each step
runs as under every backend."""

from __future__ import annotations

import logging
import shlex
from pathlib import Path

import pytest
from fixture_models import FIXTURES, NEWER, OLDER

from ersilia_pack.errors import PlanError, Problem
from ersilia_pack.install.base import Backend
from ersilia_pack.install.conda import CondaBackend
from ersilia_pack.install.installer import Installer
from ersilia_pack.install.plan import InstallPlan, read_plan
from ersilia_pack.install.system import SystemBackend
from ersilia_pack.install.venv import VenvBackend
from ersilia_pack.runtime.bundle.environment import Environment

AWKWARD_YML = FIXTURES / "ersilia-awkward-yml"
AWKWARD_DOCKERFILE = FIXTURES / "ersilia-awkward-dockerfile"

# Each step as a person would type it; "bash: ..." is a line bash runs as written.
YML_STEPS = [
    "pip install rdkit==2023.9.1",
    "pip install pandas",
    "pip install torch==2.4.0 --index-url https://download.pytorch.org/whl/cpu",
    "pip install torch-geometric==2.5.3 --extra-index-url https://data.pyg.org/whl/torch-2.4.0+cpu.html",
    "pip install torch-scatter==2.1.2 -f https://data.pyg.org/whl/torch-2.4.0+cpu.html",
    "pip install git+https://github.com/ersilia-os/bioassay-utils.git@v0.1.2",
    "pip install scikit-learn==1.10",
    "pip install 'numpy>=1.24,<2'",
    "conda install -c conda-forge xorg-libxrender=0.9.11 -y",
    "conda install -c conda-forge -c bioconda openbabel=3.1.1 -y",
    "conda install libgcc-ng -y",
    "conda install -c conda-forge xorg-libxext=1.3.4 -y",
    "bash: echo 'a plain bash line' && python -c 'import sys; print(sys.version)'",
    "bash: conda install -c conda-forge cairo -y",
]
DOCKERFILE_STEPS = [
    "pip install rdkit==2022.9.5",
    "pip install pandas==1.3.5 scikit-learn==1.0.2",
    "pip install --no-cache-dir joblib==1.1.0",
    "pip install torch==1.13.1 --index-url https://download.pytorch.org/whl/cpu",
    "pip install git+https://github.com/ersilia-os/chemprop-utils.git@main",
    "pip install molvs==0.1.1 chembl_structure_pipeline==1.0.0",
    "conda install -c conda-forge xorg-libxrender=0.9.10 -y",
    "conda install -c conda-forge -c bioconda openbabel=3.1.1 -y",
    "bash: apt-get update && apt-get install -y libxrender1",
    "pip install 'numpy>=1.21,<1.24'",
    "pip install tqdm==4.66.1",
]
# uv's pip interface has no --no-cache-dir: that step runs with the venv's own pip.
UV_RUNS_WITH_PIP = {"pip install --no-cache-dir joblib==1.1.0"}

SYSTEM_PYTHON = "/usr/local/bin/python3.11"
VENV_PYTHON = "/eos/repository/eos9aw1/.envs/0123456789abcdef/bin/python"
UV = "/usr/local/bin/uv"
CONDA = "/opt/miniconda3/bin/conda"
CONDA_PYTHON = "/opt/miniconda3/envs/eos9aw1/bin/python"


WITH_UV = Installer(name="uv", uv=UV)  # the default
WITH_PIP = Installer(name="pip")  # --installer pip


def _backends(monkeypatch: pytest.MonkeyPatch) -> dict[str, tuple[Backend, Environment]]:
    monkeypatch.setenv("CONDA_EXE", CONDA)
    venv_env = Environment(
        backend="venv", prefix=str(Path(VENV_PYTHON).parents[1]), python=VENV_PYTHON
    )
    system_env = Environment(backend="system", python=SYSTEM_PYTHON)
    return {
        "system": (SystemBackend(WITH_UV), system_env),
        "system+pip": (SystemBackend(WITH_PIP), system_env),
        "venv": (VenvBackend(WITH_UV), venv_env),
        "venv+pip": (VenvBackend(WITH_PIP), venv_env),
        "conda": (
            CondaBackend(WITH_UV),
            Environment(
                backend="conda",
                prefix=str(Path(CONDA_PYTHON).parents[1]),
                python=CONDA_PYTHON,
                variables={
                    "CONDA_PREFIX": str(Path(CONDA_PYTHON).parents[1]),
                    "CONDA_DEFAULT_ENV": "eos9aw1",
                },
            ),
        ),
    }


def _expected(backend: str, line: str) -> list[str] | None:
    """The command ``line`` must run as under ``backend``; None when the backend must refuse."""
    if line.startswith("bash: "):
        return ["bash", "-e", "-c", line.removeprefix("bash: ")]
    words = shlex.split(line)
    if words[0] == "conda":
        return [CONDA, "install", "-n", "eos9aw1", *words[2:]] if backend == "conda" else None
    python = {"system": SYSTEM_PYTHON, "system+pip": SYSTEM_PYTHON, "conda": CONDA_PYTHON}.get(
        backend, VENV_PYTHON
    )
    if not backend.endswith("+pip") and line not in UV_RUNS_WITH_PIP:
        # uv: a step's own --index-url is its --default-index, which UV_DEFAULT_INDEX (set
        # by a mirror configuration) does not override
        uv_words = ["--default-index" if w in ("--index-url", "-i") else w for w in words[2:]]
        return [UV, "pip", "install", "--python", python, *uv_words]
    return [python, "-m", "pip", "install", *words[2:]]


def _as_typed(plan: InstallPlan) -> list[str]:
    return [
        f"bash: {step.script}" if step.kind == "bash" else step.display() for step in plan.steps
    ]


@pytest.mark.parametrize(
    ("model_dir", "steps"),
    [(AWKWARD_YML, YML_STEPS), (AWKWARD_DOCKERFILE, DOCKERFILE_STEPS)],
    ids=["install.yml", "Dockerfile"],
)
@pytest.mark.parametrize("backend", ["system", "system+pip", "venv", "venv+pip", "conda"])
def test_awkward_install_steps_run_as_exact_commands(
    model_dir: Path, steps: list[str], backend: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    problems: list[Problem] = []
    plan = read_plan(model_dir, problems)
    assert problems == []
    assert plan.python == "3.10"
    assert _as_typed(plan) == steps
    installer, environment = _backends(monkeypatch)[backend]
    for step, line in zip(plan.steps, steps, strict=True):
        expected = _expected(backend, line)
        if expected is None:
            with pytest.raises(PlanError, match="pack with --conda"):
                installer.command(step, environment)
        else:
            assert installer.command(step, environment) == expected, line


# Under --venv and --system every conda step of the awkward files has a pip translation or is
# a C library that pip wheels carry: (step, conda spec, action, pip requirement).
YML_CONDA = [
    ("install.yml command 9", "xorg-libxrender=0.9.11", "skip", ""),
    ("install.yml command 10", "openbabel=3.1.1", "pip", "openbabel-wheel==3.1.1.*"),
    ("install.yml command 11", "libgcc-ng", "skip", ""),
    ("install.yml command 12", "xorg-libxext=1.3.4", "skip", ""),
    ("install.yml command 14", "cairo", "skip", ""),
]
DOCKERFILE_CONDA = [
    ("Dockerfile line 14", "xorg-libxrender=0.9.10", "skip", ""),
    ("Dockerfile line 15", "openbabel=3.1.1", "pip", "openbabel-wheel==3.1.1.*"),
]


@pytest.mark.parametrize(
    ("model_dir", "decisions"),
    [(AWKWARD_YML, YML_CONDA), (AWKWARD_DOCKERFILE, DOCKERFILE_CONDA)],
    ids=["install.yml", "Dockerfile"],
)
@pytest.mark.parametrize("backend", [SystemBackend, VenvBackend])
def test_conda_steps_become_pip_steps_or_skips_without_conda(
    model_dir: Path, decisions: list[tuple[str, str, str, str]], backend: type[Backend]
) -> None:
    plan = read_plan(model_dir, [])
    translation = backend(WITH_UV).translate(plan)
    made = [(d.step, d.conda, d.action, d.pip) for d in translation.decisions]
    assert made == decisions
    # the openbabel step is now a pip step; the skipped ones are gone; nothing else changed
    steps = {step.name: step for step in translation.plan.steps}
    [pip_step] = [step for step in decisions if step[2] == "pip"]
    assert steps[pip_step[0]].args == [pip_step[3]]
    skipped = {step[0] for step in decisions if step[2] == "skip"}
    assert [s.name for s in translation.plan.steps] == [
        s.name for s in plan.steps if s.name not in skipped
    ]
    assert not any(step.kind == "conda" or step.uses_conda for step in translation.plan.steps)
    # --conda runs them as they are
    assert CondaBackend(WITH_UV).translate(plan).plan == plan


def test_a_bash_line_that_calls_conda_among_other_commands_is_refused_without_conda() -> None:
    plan = read_plan(AWKWARD_YML, [])
    plan.steps = [step for step in plan.steps if step.kind != "conda"]
    plan.steps[-1].script = "conda install -c conda-forge cairo -y && echo installed"
    with pytest.raises(
        PlanError,
        match=r"install.yml command 14' calls conda inside a bash line .*pack with --conda",
    ):
        VenvBackend().check(plan)
    CondaBackend().check(plan)


def test_dockerfile_steps_are_named_by_the_line_they_start_on() -> None:
    plan = read_plan(AWKWARD_DOCKERFILE, [])
    names = [step.name for step in plan.steps]
    assert names[:6] == [f"Dockerfile line {n}" for n in (5, 6, 7, 8, 9, 10)]
    assert names[6] == "Dockerfile line 14"


class _Warnings(logging.Handler):
    """Warnings of the ``ersilia_pack`` logger, caught on the logger itself (the CLI stops it
    from propagating to the root logger, where caplog listens)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())

    def __enter__(self) -> _Warnings:
        logging.getLogger("ersilia_pack").addHandler(self)
        return self

    def __exit__(self, *exc: object) -> None:
        logging.getLogger("ersilia_pack").removeHandler(self)


def test_an_unquoted_python_version_keeps_its_digits_with_a_warning() -> None:
    with _Warnings() as warnings:
        plan = read_plan(AWKWARD_YML, [])
    assert plan.python == "3.10"
    assert warnings.messages == [
        "install.yml: python: 3.10 is a number to YAML, which reads it as 3.1; ersilia-pack takes "
        'the text "3.10" (quote it for other tools: python: "3.10")'
    ]


def test_the_fixture_generations_give_their_python_without_warnings() -> None:
    with _Warnings() as warnings:
        newer, older = read_plan(NEWER, []), read_plan(OLDER, [])
    assert warnings.messages == []
    assert (newer.source, newer.python) == ("install.yml", "3.10")
    assert (older.source, older.python) == ("Dockerfile", "3.11")
    assert _as_typed(newer) == [
        "pip install fixture-helper==1.0.0 --no-index -f ./vendor",
        'bash: python -c "import csv, json; print(\\"standard library ready\\")"',
    ]
    assert _as_typed(older) == [
        "pip install fixture-helper==1.0.0 --no-index -f ./vendor",
        "bash: python -c 'import sqlite3, json'",
        'bash: python -c "import csv" && echo "standard library ready"',
    ]


@pytest.mark.parametrize(
    ("image", "python"),
    [
        ("bentoml/model-server:0.11.0-py37", "3.7"),
        ("ersiliaos/base:0.11.0-py310", "3.10"),
        ("ersiliaos/base:0.11.0-py311 AS build", "3.11"),
        ("ersiliaos/base:v1-py3.12", "3.12"),
        ("python:3.11-slim", None),
    ],
)
def test_the_python_version_comes_from_the_from_tag(
    tmp_path: Path, image: str, python: str | None
) -> None:
    (tmp_path / "Dockerfile").write_text(f"FROM {image}\nRUN pip install rdkit==2023.9.1\n")
    assert read_plan(tmp_path, []).python == python


@pytest.mark.parametrize(
    ("item", "command"),
    [
        ('["pip", "numpy", "==1.26.4"]', "pip install numpy==1.26.4"),
        ('["pip", "-r", "requirements.txt"]', "pip install -r requirements.txt"),
        ('["pip", "rdkit", "2023.9.1", "--no-deps"]', "pip install rdkit==2023.9.1 --no-deps"),
        (
            '["conda", "rdkit", "2023.09.1", "-c", "conda-forge"]',
            "conda install -c conda-forge rdkit=2023.09.1 -y",
        ),
        (
            '["conda", "rdkit", "2023.09.1", "conda-forge", "-y"]',
            "conda install -c conda-forge rdkit=2023.09.1 -y",
        ),
        ('["conda", "pytorch", ">=2", "pytorch"]', "conda install -c pytorch 'pytorch>=2' -y"),
        ('"RUN pip install tqdm"', "bash: pip install tqdm"),
    ],
)
def test_more_install_yml_command_shapes(tmp_path: Path, item: str, command: str) -> None:
    (tmp_path / "install.yml").write_text(f'python: "3.11"\ncommands:\n  - {item}\n')
    problems: list[Problem] = []
    assert _as_typed(read_plan(tmp_path, problems)) == [command]
    assert problems == []


def test_a_command_of_an_unknown_shape_is_a_problem_naming_it(tmp_path: Path) -> None:
    (tmp_path / "install.yml").write_text(
        'python: "3.11"\ncommands:\n  - ["npm", "install", "x"]\n'
    )
    problems: list[Problem] = []
    read_plan(tmp_path, problems)
    assert [str(problem) for problem in problems] == [
        "install.yml: command 1 is ['npm', 'install', 'x'] "
        '(use ["pip", name, version], ["conda", name, version, channel] or a bash line as a string)'
    ]
