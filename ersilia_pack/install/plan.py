"""Install plans: the steps of install.sh, install.yml or a Dockerfile, in one shape."""

from __future__ import annotations

import json
import logging
import re
import shlex
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel

from ersilia_pack.errors import Problem

logger = logging.getLogger("ersilia_pack")
StepKind = Literal["bash", "pip", "conda"]
_SHELL_OPERATORS = frozenset({"&&", "||", ";", ";;", "|", "&", ">", ">>", "<", "<<", "(", ")"})
# FROM tags such as bentoml/model-server:0.11.0-py310, ersiliaos/base:v1-py3.11 or -py38.
_PY_TAG = re.compile(r"py(3)\.?(\d{1,2})\b")
_CONDA_COMMAND = re.compile(
    r"(?:^|[;&|(]\s*|\bsudo\s+)(?:conda|mamba|micromamba)\s+(?:install|create)\b", re.MULTILINE
)
_TEXT_TAGS = frozenset(
    f"tag:yaml.org,2002:{name}" for name in ("bool", "int", "float", "timestamp")
)


class _TextLoader(yaml.SafeLoader):
    """Reads plain scalars as the text written: ``python: 3.10`` stays "3.10", not 3.1."""


_TextLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag not in _TEXT_TAGS]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


class InstallStep(BaseModel):
    """One step: a bash script, ``pip install <args>`` or ``conda install <args>``.

    ``uses_conda`` marks a bash line that calls ``conda install`` itself, which only the conda
    backend can run.
    """

    name: str
    kind: StepKind
    args: list[str] = []
    script: str = ""
    uses_conda: bool = False

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


def _bash_step(name: str, script: str) -> InstallStep:
    return InstallStep(
        name=name, kind="bash", script=script, uses_conda=bool(_CONDA_COMMAND.search(script))
    )


def _words(items: list[str]) -> list[str]:
    """List items split like a shell would ("--index-url URL" is two words)."""
    return [word for item in items for word in shlex.split(item)]


def _requirement(package: str, version: str) -> str:
    """``name==version``; a version with its own operator (``>=1.2``) or a URL stays as it is."""
    if not version or package.startswith(("git+", "http://", "https://", "file:", ".", "/")):
        return package
    if version[0] in "=<>!~":
        return f"{package}{version}"
    return f"{package}=={version}"


def _yml_pip(item: list[str]) -> list[str]:
    """``[name, version, *flags]`` (version may be empty), ``[url]``, or raw pip arguments."""
    if item[0] == "install":
        item = item[1:]
    if len(item) == 1 or item[0].startswith("-"):
        return _words(item)
    package, version, *flags = item
    return [_requirement(package, version.strip()), *_words(flags)]


def _conda_spec(package: str, version: str) -> str:
    if not version:
        return package
    return f"{package}{version}" if version[0] in "=<>!~" else f"{package}={version}"


def _conda_args(words: list[str]) -> list[str]:
    """Raw ``conda install`` arguments with exactly one ``-y`` at the end."""
    return [*(word for word in words if word not in ("-y", "--yes")), "-y"]


def _yml_conda(item: list[str]) -> list[str]:
    """``[name, version, *channels]`` (the longer forms add channels or flags), or raw arguments.

    ``["conda", "rdkit", "2023.9.1", "conda-forge", "bioconda"]`` is
    ``conda install -c conda-forge -c bioconda rdkit=2023.9.1 -y``.
    """
    if item[0] == "install" or item[0].startswith("-"):
        return _conda_args(_words(item[1:] if item[0] == "install" else item))
    package, version, rest = item[0], item[1].strip() if len(item) > 1 else "", _words(item[2:])
    channels: list[str] = []
    flags: list[str] = []
    position = 0
    while position < len(rest):
        word = rest[position]
        if word in ("-c", "--channel") and position + 1 < len(rest):
            channels += ["-c", rest[position + 1]]
            position += 1
        elif word.startswith("-"):
            flags.append(word)
        elif word:
            channels += ["-c", word]
        position += 1
    return _conda_args([*channels, _conda_spec(package, version), *flags])


def _plain_number(text: str, key: str) -> bool:
    """True when ``key`` of a YAML mapping is written unquoted (YAML would read 3.10 as 3.1)."""
    node = yaml.compose(text, Loader=_TextLoader)
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            if key_node.value == key and isinstance(value_node, yaml.ScalarNode):
                return value_node.style is None
    return False


def _read_yml(path: Path, problems: list[Problem]) -> Any:
    """The YAML of ``path`` with scalars kept as written; None (and a problem) when invalid."""
    text = path.read_text(encoding="utf-8")
    try:
        data = yaml.load(text, Loader=_TextLoader)  # a SafeLoader: no arbitrary objects
    except yaml.YAMLError as error:
        problems.append(
            Problem(
                path.name,
                f"is not valid YAML: {error}".splitlines()[0],
                "fix the syntax of the commands list",
            )
        )
        return None
    python = data.get("python") if isinstance(data, dict) else None
    if (
        isinstance(python, str)
        and re.fullmatch(r"\d+\.\d*0", python)
        and _plain_number(text, "python")
    ):
        logger.warning(
            "%s: python: %s is a number to YAML, which reads it as %s; ersilia-pack takes "
            'the text "%s" (quote it for other tools: python: "%s")',
            path.name,
            python,
            float(python),
            python,
            python,
        )
    return {} if data is None else data


def plan_from_yml(path: Path, problems: list[Problem]) -> InstallPlan:
    """``install.yml``: ``python: "3.x"`` and ``commands:`` (lists or bash strings)."""
    data = _read_yml(path, problems)
    if data is None:
        return InstallPlan(source=path.name)
    if not isinstance(data, dict):
        problems.append(Problem(path.name, "must be a mapping with 'python' and 'commands'"))
        return InstallPlan(source=path.name)
    python = data.get("python")
    if python is not None and not isinstance(python, str):
        problems.append(
            Problem(path.name, f"'python' is {python!r}, not a version", 'e.g. python: "3.10"')
        )
        python = None
    plan = InstallPlan(source=path.name, python=python.strip() if python else None)
    commands = data.get("commands") or []
    if not isinstance(commands, list):
        problems.append(Problem(path.name, "'commands' must be a list"))
        return plan
    for number, raw in enumerate(commands, start=1):
        name = f"{path.name} command {number}"
        if isinstance(raw, str):
            script = raw[4:] if raw[:4].upper() == "RUN " else raw
            plan.steps.append(_bash_step(name, script))
            continue
        item = (
            [str(part) if part is not None else "" for part in raw] if isinstance(raw, list) else []
        )
        if len(item) >= 2 and item[0] == "pip":
            plan.steps.append(InstallStep(name=name, kind="pip", args=_yml_pip(item[1:])))
        elif len(item) >= 2 and item[0] == "conda":
            plan.steps.append(InstallStep(name=name, kind="conda", args=_yml_conda(item[1:])))
        else:
            problems.append(
                Problem(
                    path.name,
                    f"command {number} is {raw!r}",
                    'use ["pip", name, version], ["conda", name, version, channel] or a '
                    "bash line as a string",
                )
            )
    return plan


def _instructions(text: str) -> list[tuple[int, str]]:
    """A Dockerfile's instructions with the line each starts on; continuations joined."""
    found: list[tuple[int, str]] = []
    current: list[str] = []
    start = 0
    for number, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not current and (not stripped or stripped.startswith("#")):
            continue
        if current and stripped.startswith("#"):
            continue  # a comment inside a continued instruction
        if not current:
            start = number
        if stripped.endswith("\\"):
            current.append(stripped[:-1].strip())
            continue
        current.append(stripped)
        found.append((start, " ".join(part for part in current if part)))
        current = []
    if current:
        found.append((start, " ".join(part for part in current if part)))
    return found


def _shell_words(command: str) -> list[str] | None:
    """The words of a simple command, or None when bash must run it (operators, expansions)."""
    if "$" in command or "`" in command:
        return None
    lexer = shlex.shlex(command, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    words = list(lexer)
    if any(word in _SHELL_OPERATORS or word.startswith("~") for word in words):
        return None
    return words


def _step_from_run(name: str, command: str) -> InstallStep:
    if command.startswith("["):
        try:  # the exec form: RUN ["pip", "install", "x"]
            exec_form = json.loads(command)
        except ValueError:
            exec_form = None
        if isinstance(exec_form, list) and all(isinstance(word, str) for word in exec_form):
            command = shlex.join(exec_form)
    words = _shell_words(command)
    if words is None:
        return _bash_step(name, re.sub(r"(^|&&\s*|\|\|\s*|;\s*)sudo\s+(-E\s+)?", r"\1", command))
    if words[:1] == ["sudo"]:
        words = words[2:] if words[1:2] == ["-E"] else words[1:]
    if words[:2] in (["pip", "install"], ["pip3", "install"]):
        return InstallStep(name=name, kind="pip", args=words[2:])
    if words[:4] in (["python", "-m", "pip", "install"], ["python3", "-m", "pip", "install"]):
        return InstallStep(name=name, kind="pip", args=words[4:])
    if words[:2] in (["conda", "install"], ["mamba", "install"]):
        return InstallStep(name=name, kind="conda", args=_conda_args(words[2:]))
    return _bash_step(name, shlex.join(words))


def conda_words(script: str) -> list[str] | None:
    """The arguments of a bash line that is one plain ``conda install ...``, else None."""
    try:
        words = _shell_words(script.strip())
    except ValueError:
        return None
    if words and words[0] == "sudo":
        words = words[1:]
    if words is None or words[:2] not in (["conda", "install"], ["mamba", "install"]):
        return None
    return _conda_args(words[2:])


def plan_from_dockerfile(path: Path, problems: list[Problem]) -> InstallPlan:
    """An older-format ``Dockerfile``: Python from the FROM tag, steps from RUN lines."""
    plan = InstallPlan(source=path.name)
    for number, line in _instructions(path.read_text(encoding="utf-8")):
        keyword, _, rest = line.partition(" ")
        if keyword.upper() == "FROM":
            match = _PY_TAG.search(rest)
            if match:
                plan.python = f"{match.group(1)}.{match.group(2)}"
        elif keyword.upper() == "RUN" and rest.strip():
            try:
                plan.steps.append(_step_from_run(f"{path.name} line {number}", rest.strip()))
            except ValueError as error:
                problems.append(
                    Problem(
                        path.name,
                        f"the RUN instruction on line {number} cannot be read: {error}",
                        "check its quotes",
                    )
                )
    return plan


def pick_install_script(model_dir: Path, variant: str | None) -> Path | None:
    """``install_<variant>.sh`` when it exists, else install.sh (None: neither exists).

    Which variant fits the machine is decided before (:mod:`ersilia_pack.install.variant`).
    """
    if variant and (model_dir / f"install_{variant}.sh").is_file():
        return model_dir / f"install_{variant}.sh"
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
