"""Conda steps for backends without conda: each package becomes a pip install, a skip, or a
program that must already be on PATH, decided from a table shipped with the package.

A step none of these covers stops the pack before anything is installed, as does a program
that is missing: the message names the step and what to do.
"""

from __future__ import annotations

import functools
import json
import logging
import os
import shutil
from dataclasses import dataclass
from importlib import resources
from typing import Any, Literal

from pydantic import BaseModel

from ersilia_pack.errors import PlanError
from ersilia_pack.install.plan import InstallPlan, InstallStep, conda_words

logger = logging.getLogger("ersilia_pack")
TABLE = "conda_to_pip.json"
Action = Literal["pip", "skip", "program"]
# conda options that take a value; everything else starting with "-" is a flag.
_VALUE_OPTIONS = frozenset({"-c", "--channel", "-n", "--name", "-p", "--prefix", "--file"})
_ALREADY_THERE = {
    "python": "the environment's Python is the one this backend has",
    "pip": "the environment has pip already",
    "setuptools": "the environment has setuptools already",
}


class CondaDecision(BaseModel):
    """What became of one conda package of one step (kept in the manifest)."""

    step: str
    conda: str
    action: Action
    pip: str = ""
    note: str = ""

    def describe(self) -> str:
        if self.action == "pip":
            return f"conda {self.conda} -> pip install {self.pip}"
        if self.action == "skip":
            return f"conda {self.conda} -> skipped: {self.note}"
        return f"conda {self.conda} -> {self.note}"


@dataclass(frozen=True)
class Translation:
    """The plan as it runs without conda, and every decision made on the way."""

    plan: InstallPlan
    decisions: list[CondaDecision]


@functools.cache
def table() -> dict[str, Any]:
    """The translation table (``pip``, ``skip``, ``program``), read once from package data."""
    text = resources.files("ersilia_pack.install").joinpath(TABLE).read_text(encoding="utf-8")
    data: dict[str, Any] = json.loads(text)
    return data


def _specs(args: list[str]) -> list[str]:
    """The package specs of ``conda install`` arguments (channels and flags left out)."""
    specs: list[str] = []
    skip_next = False
    for word in args:
        if skip_next:
            skip_next = False
        elif word in _VALUE_OPTIONS:
            skip_next = True
        elif not word.startswith("-"):
            specs.append(word)
    return specs


def _split_spec(spec: str) -> tuple[str, str, str]:
    """``name``, the operator and the version of a conda spec; a build string is dropped.

    ``rdkit=2023.9.1`` (conda's fuzzy ``=``, any 2023.9.1.x), ``numpy==1.26.4`` (exact),
    ``pandas>=1.5``, ``openbabel=3.1.1=py310h1`` (version and build), ``channel::name``.
    """
    spec = spec.split("::", 1)[-1].strip()
    for position, char in enumerate(spec):
        if char in "=<>!~ ":
            name, rest = spec[:position], spec[position:].replace(" ", "")
            break
    else:
        return spec, "", ""
    if rest.startswith("=="):
        return name, "==", rest[2:].split("=", 1)[0]
    if rest.startswith("="):
        return name, "=", rest[1:].split("=", 1)[0]
    return name, "", rest


def _pip_requirement(pip_name: str, operator: str, version: str) -> str:
    if not version:
        return pip_name
    if operator == "==":
        return f"{pip_name}=={version}"
    if operator == "=":
        # conda's "=1.2.3" is a prefix match (1.2.3, 1.2.3.1, ...): pip's "==1.2.3.*"
        version = version.removesuffix(".*").removesuffix("*")
        return f"{pip_name}=={version}.*"
    return f"{pip_name}{version}"


def _decide(step: InstallStep, spec: str, backend: str) -> CondaDecision:
    data = table()
    name, operator, version = _split_spec(spec)
    key = name.lower()
    if key in _ALREADY_THERE:
        return CondaDecision(step=step.name, conda=spec, action="skip", note=_ALREADY_THERE[key])
    if key in data["pip"]:
        requirement = _pip_requirement(data["pip"][key], operator, version)
        return CondaDecision(step=step.name, conda=spec, action="pip", pip=requirement)
    if key in data["skip"]:
        return CondaDecision(
            step=step.name,
            conda=spec,
            action="skip",
            note="a C library that pip wheels carry inside them",
        )
    if key in data["program"]:
        program = data["program"][key]
        found = shutil.which(program["program"], path=os.environ.get("PATH"))
        if found:
            note = f"the program {program['program']} is on PATH ({found})"
            return CondaDecision(step=step.name, conda=spec, action="program", note=note)
        raise PlanError(
            f"install step '{step.name}' needs the program {program['program']} "
            f"(conda package {spec}), which is not on PATH: install it "
            f"(e.g. {program['install']}) or pack with --conda"
        )
    raise PlanError(
        f"install step '{step.name}' is a conda step ({step.display()[:200]}), which "
        f"--{backend} cannot run: pack with --conda (ersilia-pack knows no pip package for "
        f"conda's {name}; its table is ersilia_pack/install/{TABLE})"
    )


def _conda_args_of(step: InstallStep) -> list[str] | None:
    """The ``conda install`` arguments of a step, or None when it is not a plain conda install."""
    if step.kind == "conda":
        return step.args
    if step.kind == "bash" and step.uses_conda:
        return conda_words(step.script)
    return None


def translate(plan: InstallPlan, backend: str) -> Translation:
    """The plan with every conda step turned into pip (or dropped); PlanError when one can't be.

    Every decision is made (and every program looked for) before anything is installed.
    """
    steps: list[InstallStep] = []
    decisions: list[CondaDecision] = []
    for step in plan.steps:
        args = _conda_args_of(step)
        if args is None and step.uses_conda:
            raise PlanError(
                f"install step '{step.name}' calls conda inside a bash line "
                f"({step.display()[:200]}), which --{backend} cannot translate: pack with --conda"
            )
        if args is None:
            steps.append(step)
            continue
        specs = _specs(args)
        if not specs:
            raise PlanError(
                f"install step '{step.name}' ({step.display()[:200]}) names no package: "
                "pack with --conda"
            )
        made = [_decide(step, spec, backend) for spec in specs]
        decisions.extend(made)
        requirements = [decision.pip for decision in made if decision.action == "pip"]
        if requirements:
            steps.append(InstallStep(name=step.name, kind="pip", args=requirements))
    return Translation(plan=plan.model_copy(update={"steps": steps}), decisions=decisions)


def log_decisions(decisions: list[CondaDecision]) -> None:
    """Print every decision under its step's name."""
    for decision in decisions:
        logger.info("step %s: %s", decision.step, decision.describe())
