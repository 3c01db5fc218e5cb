"""The conda backend: an environment named after the model, with the Python it asks for.

Repacking the same plan installs into the same environment again. When an earlier bundle of
the model uses the environment and this pack would install something else into it (another
plan, or ``--force``), the pack gets an environment of its own, ``NAME-<plan key>``, so the
earlier bundles keep the environment they were checked with.
"""

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
    environment_key,
    which,
)
from ersilia_pack.install.installer import Installer
from ersilia_pack.runtime.bundle.environment import Environment
from ersilia_pack.runtime.bundle.manifest import MANIFEST, TAG_PATTERN

logger = logging.getLogger("ersilia_pack")
PLAN_MARK = ".ersilia-pack-plan"


def _used_by_bundles(repository_dir: Path, prefix: Path) -> list[str]:
    """The bundles of the model (tags) whose manifest names ``prefix`` as their environment."""
    users: list[str] = []
    if not repository_dir.is_dir():
        return users
    for bundle in sorted(repository_dir.iterdir()):
        if not TAG_PATTERN.match(bundle.name):
            continue
        try:
            manifest = json.loads((bundle / MANIFEST).read_text(encoding="utf-8"))
            used = manifest["environment"]["prefix"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if used and Path(used).resolve() == prefix.resolve():
            users.append(bundle.name)
    return users


class CondaBackend(Backend):
    """Creates (or reuses) ``conda`` environment ``MODEL_ID`` and installs inside it."""

    name = "conda"
    runs_conda_steps = True

    def __init__(self, installer: Installer | None = None) -> None:
        super().__init__(installer)
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

    def _choose(self, request: EnvRequest, name: str, key: str) -> tuple[str, Path | None]:
        """``name`` and its prefix (None: to be made), or a name of this pack's own when
        installing into ``name`` could change the environment of an earlier bundle."""
        prefix = self.find(name)
        if prefix is None:
            return name, None
        users = _used_by_bundles(request.repository_dir, prefix)
        mark = prefix / PLAN_MARK
        same_plan = mark.is_file() and mark.read_text(encoding="utf-8").strip() == key
        if not users or (same_plan and not request.force):
            return name, prefix
        own = f"{name}-{key[:8]}"
        own_prefix = self.find(own)
        if request.force and own_prefix is not None:
            own = f"{own}-{request.tag or 'force'}"
            own_prefix = self.find(own)
        why = "--force" if request.force else "this pack installs another plan"
        logger.info(
            "conda environment %s serves earlier bundles (%s) and %s: installing into "
            "conda environment %s instead",
            name,
            ", ".join(users),
            why,
            own,
        )
        return own, own_prefix

    def prepare(self, request: EnvRequest) -> PreparedEnv:
        python = (request.plan.python or current_python_version()).strip()
        key = environment_key(request, self.name, python, self.installer.name)
        name, prefix = self._choose(request, request.env_name or request.model_id, key)
        self._env_name = name
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
        self.pip_follows_cutoff(environment, request)
        return PreparedEnv(environment)

    def finish(self, request: EnvRequest, prepared: PreparedEnv) -> None:
        """Mark the environment with the plan it now holds."""
        assert prepared.environment.prefix is not None
        key = environment_key(
            request, self.name, prepared.environment.python_version, self.installer.name
        )
        (Path(prepared.environment.prefix) / PLAN_MARK).write_text(key + "\n", encoding="utf-8")

    def conda_command(self, environment: Environment, args: list[str]) -> list[str]:
        name = environment.variables.get("CONDA_DEFAULT_ENV", self._env_name)
        return [self.executable, "install", "-n", name, *args]
