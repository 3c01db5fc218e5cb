"""Install plans: the steps of install.sh, install.yml or a Dockerfile, in one shape."""

from __future__ import annotations

import platform
import re
import shlex
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel

from ersilia_pack.errors import Problem

StepKind = Literal["bash", "pip", "conda"]
_SHELL_OPERATORS = ("&&", "||", ";", "|", ">", "<", "$(", "`")
_PY_TAG = re.compile(r"py(3)(\d{1,2})\b")


class InstallStep(BaseModel):
    """One step: a bash script, ``pip install <args>`` or ``conda install <args>``."""

    name: str
    kind: StepKind
    args: list[str] = []
    script: str = ""

    def display(self) -> str:
        """The step as a person would type it."""
        if self.kind == "bash":
            return self.script.strip()
        return shlex.join([self.kind, "install", *self.args])


class InstallPlan(BaseModel):
    """Every step a model needs, and the Python version it asks for."""

    source: str = ""
    python: str | None = None
    steps: list[InstallStep] = []

    def as_script(self) -> str:
        """The plan as one bash script (the bundle's installs/install.sh)."""
        lines = [
            "#!/usr/bin/env bash",
            f"# install plan from {self.source or 'nothing'}",
            "set -euo pipefail",
        ]
        if self.python:
            lines.append(f"# python {self.python}")
        for step in self.steps:
            lines.append(f"# step: {step.name}")
            lines.append(step.display())
        return "\n".join(lines) + "\n"


def _pip_step(name: str, args: list[str]) -> InstallStep:
    return InstallStep(name=name, kind="pip", args=args)


def _yml_pip(item: list[str]) -> list[str]:
    if len(item) == 1:
        return [item[0]]
    package, version, *flags = item
    requirement = package
    if version and not package.startswith(("git+", "http://", "https://", "file:")):
        requirement = f"{package}=={version}" if version[0].isdigit() else f"{package}{version}"
    extra = [token for flag in flags for token in shlex.split(str(flag))]
    return [requirement, *extra]


def _yml_conda(item: list[str]) -> list[str]:
    package, version, rest = item[0], item[1] if len(item) > 1 else "", item[2:]
    spec = f"{package}={version}" if version else package
    args: list[str] = []
    if rest and rest[0] and not rest[0].startswith("-"):
        args += ["-c", rest[0]]
        rest = rest[1:]
    return [*args, spec, *[token for flag in rest for token in shlex.split(str(flag))], "-y"]


def plan_from_yml(path: Path, problems: list[Problem]) -> InstallPlan:
    """``install.yml``: ``python: "3.x"`` and ``commands:`` (lists or bash strings)."""
    try:
        data: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as error:
        problems.append(
            Problem(
                path.name,
                f"is not valid YAML: {error}".splitlines()[0],
                "fix the syntax of the commands list",
            )
        )
        return InstallPlan(source=path.name)
    data = data or {}
    if not isinstance(data, dict):
        problems.append(Problem(path.name, "must be a mapping with 'python' and 'commands'"))
        return InstallPlan(source=path.name)
    python = data.get("python")
    plan = InstallPlan(source=path.name, python=str(python) if python is not None else None)
    if isinstance(python, float):
        problems.append(
            Problem(
                path.name,
                f"'python' is the number {python}, which loses digits (3.10 reads as 3.1)",
                'quote it: python: "3.10"',
            )
        )
    commands = data.get("commands") or []
    if not isinstance(commands, list):
        problems.append(Problem(path.name, "'commands' must be a list"))
        return plan
    for number, raw in enumerate(commands, start=1):
        name = f"{path.name} command {number}"
        if isinstance(raw, str):
            plan.steps.append(InstallStep(name=name, kind="bash", script=raw))
            continue
        item = (
            [str(part) if part is not None else "" for part in raw] if isinstance(raw, list) else []
        )
        if len(item) >= 2 and item[0] == "pip":
            plan.steps.append(_pip_step(name, _yml_pip(item[1:])))
        elif len(item) >= 2 and item[0] == "conda":
            plan.steps.append(InstallStep(name=name, kind="conda", args=_yml_conda(item[1:])))
        else:
            problems.append(
                Problem(
                    path.name,
                    f"command {number} is {raw!r}",
                    'use ["pip", '
                    'name, version], ["conda", name, version, channel] or a '
                    "bash line as a string",
                )
            )
    return plan


def _run_lines(text: str) -> list[str]:
    joined = re.sub(r"\\\s*\n", " ", text)
    return [line.strip() for line in joined.splitlines()]


def _step_from_run(name: str, command: str) -> InstallStep:
    if not any(op in command for op in _SHELL_OPERATORS):
        words = shlex.split(command)
        if words and words[0] == "sudo":
            words = words[1:]
        if words[:2] in (["pip", "install"], ["pip3", "install"]):
            return _pip_step(name, words[2:])
        if words[:4] in (["python", "-m", "pip", "install"], ["python3", "-m", "pip", "install"]):
            return _pip_step(name, words[4:])
        if words[:2] == ["conda", "install"]:
            args = [word for word in words[2:] if word not in ("-y", "--yes")]
            return InstallStep(name=name, kind="conda", args=[*args, "-y"])
        command = shlex.join(words)
    return InstallStep(
        name=name, kind="bash", script=re.sub(r"(^|&&\s*|;\s*)sudo\s+", r"\1", command)
    )


def plan_from_dockerfile(path: Path, problems: list[Problem]) -> InstallPlan:
    """An older-format ``Dockerfile``: Python from the FROM tag, steps from RUN lines."""
    plan = InstallPlan(source=path.name)
    for number, line in enumerate(_run_lines(path.read_text(encoding="utf-8")), start=1):
        keyword, _, rest = line.partition(" ")
        if keyword.upper() == "FROM":
            match = _PY_TAG.search(rest)
            if match:
                plan.python = f"{match.group(1)}.{match.group(2)}"
        elif keyword.upper() == "RUN" and rest.strip():
            try:
                plan.steps.append(_step_from_run(f"Dockerfile RUN {number}", rest.strip()))
            except ValueError as error:
                problems.append(Problem(path.name, f"RUN line {number} cannot be read: {error}"))
    return plan


def pick_install_script(model_dir: Path, variant: str | None) -> Path | None:
    """``install_<variant>.sh`` when asked for (or matching this platform), else install.sh."""
    candidates = [variant] if variant else []
    machine = platform.machine().lower()
    if not variant and machine in ("arm64", "aarch64"):
        candidates.append("arm")
    for name in candidates:
        if name and (model_dir / f"install_{name}.sh").is_file():
            return model_dir / f"install_{name}.sh"
    plain = model_dir / "install.sh"
    return plain if plain.is_file() else None


def read_plan(
    model_dir: Path, problems: list[Problem], *, variant: str | None = None
) -> InstallPlan:
    """The model's install plan from whichever file carries it; install.sh comes first."""
    if variant and not (model_dir / f"install_{variant}.sh").is_file():
        problems.append(
            Problem(
                f"install_{variant}.sh",
                f"is missing, but variant {variant!r} was asked for",
                "add the file or drop --variant",
            )
        )
    script = pick_install_script(model_dir, variant)
    if script is not None:
        text = script.read_text(encoding="utf-8", errors="replace")
        step = InstallStep(name=script.name, kind="bash", script=text)
        return InstallPlan(source=script.name, steps=[step] if text.strip() else [])
    if (model_dir / "install.yml").is_file():
        return plan_from_yml(model_dir / "install.yml", problems)
    if (model_dir / "Dockerfile").is_file():
        return plan_from_dockerfile(model_dir / "Dockerfile", problems)
    return InstallPlan(source="")
