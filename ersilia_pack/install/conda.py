"""The conda backend: an environment named after the model, with the Python it asks for."""

from __future__ import annotations

import json
import logging
import os
import subprocess
from pathlib import Path

from ersilia_pack.errors import InstallError, PlanError
from ersilia_pack.install.base import (
    Backend,
    EnvRequest,
    PreparedEnv,
    current_python_version,
    which,
)
from ersilia_pack.runtime.bundle.environment import Environment

logger = logging.getLogger("ersilia_pack")


class CondaBackend(Backend):
    """Creates (or reuses) ``conda`` environment ``MODEL_ID`` and installs inside it."""

    name = "conda"
    runs_conda_steps = True

    def __init__(self) -> None:
        self._env_name = ""

    @property
    def executable(self) -> str:
        found = os.environ.get("CONDA_EXE") or which("conda")
        if not found:
            raise PlanError(
                "conda is not on PATH (nor CONDA_EXE set): install Miniconda, or pack with --venv"
            )
        return found

    def _conda(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([self.executable, *args], capture_output=True, text=True, check=False)

    def find(self, name: str) -> Path | None:
        """The prefix of the environment called ``name``, if it exists."""
        result = self._conda("env", "list", "--json")
        if result.returncode != 0:
            raise InstallError(
                "list conda environments", "conda env list --json", result.returncode, result.stderr
            )
        prefixes = [Path(prefix) for prefix in json.loads(result.stdout).get("envs", [])]
        # Named environments live in <root>/envs/NAME; the root (base) only matches by its name
        # when no named environment does.
        named = [prefix for prefix in prefixes if prefix.name == name]
        in_envs = [prefix for prefix in named if prefix.parent.name == "envs"]
        return next(iter(in_envs or named), None)

    def create_command(self, name: str, python: str) -> list[str]:
        return [self.executable, "create", "-y", "-n", name, f"python={python}"]

    def prepare(self, request: EnvRequest) -> PreparedEnv:
        name = request.env_name or request.model_id
        self._env_name = name
        python = (request.plan.python or current_python_version()).strip()
        prefix = self.find(name)
        if prefix is None:
            command = self.create_command(name, python)
            logger.info("creating conda environment %s with Python %s", name, python)
            result = subprocess.run(command, capture_output=True, text=True, check=False)
            if result.returncode != 0:
                raise InstallError(
                    "create environment",
                    " ".join(command),
                    result.returncode,
                    result.stdout + result.stderr,
                )
            prefix = self.find(name)
            if prefix is None:
                raise InstallError(
                    "create environment",
                    " ".join(command),
                    0,
                    f"conda reported success but has no environment {name}",
                )
        else:
            logger.info("reusing conda environment %s at %s", name, prefix)
        environment = Environment(
            backend=self.name,
            prefix=str(prefix),
            python=str(prefix / "bin" / "python"),
            python_version=python,
            variables={"CONDA_PREFIX": str(prefix), "CONDA_DEFAULT_ENV": name},
        )
        return PreparedEnv(environment)

    def conda_command(self, environment: Environment, args: list[str]) -> list[str]:
        name = environment.variables.get("CONDA_DEFAULT_ENV", self._env_name)
        return [self.executable, "install", "-n", name, *args]
