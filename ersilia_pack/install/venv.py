"""The venv backend: an isolated environment inside the model's repository folder.

uv makes it (``uv venv``, seeded with pip when a step runs pip itself) and installs the
structured steps; ``--installer pip`` makes it with the standard library's venv and installs
with its pip. An environment is made for one plan, installer and cut-off, and reused by later
packs of the same; a pack never removes or changes an environment that a bundle uses: with
``--force`` it makes a new one beside it, and a failed pack removes only what it made itself.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ersilia_pack.errors import InstallError
from ersilia_pack.install.base import (
    Backend,
    EnvRequest,
    PreparedEnv,
    current_python_version,
    environment_key,
)
from ersilia_pack.install.installer import PIP_WITH_CUTOFF, pip_version
from ersilia_pack.runtime.bundle.environment import Environment

logger = logging.getLogger("ersilia_pack")
ENVS_DIR = ".envs"
COMPLETE = ".ersilia-pack-complete"


class VenvBackend(Backend):
    """Isolation without conda."""

    name = "venv"

    def key(self, request: EnvRequest) -> str:
        return environment_key(request, self.name, current_python_version(), self.installer.name)

    def location(self, request: EnvRequest) -> Path:
        """Where a new environment for ``request`` goes: never a folder that exists already."""
        envs = request.repository_dir / ENVS_DIR
        key = self.key(request)
        if not (envs / key).exists():
            return envs / key
        suffix = request.tag or time.strftime("%Y%m%d-%H%M%S")
        candidate = envs / f"{key}-{suffix}"
        number = 1
        while candidate.exists():
            number += 1
            candidate = envs / f"{key}-{suffix}-{number}"
        return candidate

    def complete(self, request: EnvRequest) -> Path | None:
        """A finished environment made for exactly this request's plan, if one exists."""
        envs = request.repository_dir / ENVS_DIR
        key = self.key(request)
        found = [
            path
            for path in [envs / key, *sorted(envs.glob(f"{key}-*"), reverse=True)]
            if (path / COMPLETE).is_file()
        ]
        return found[0] if found else None

    def _environment(self, prefix: Path) -> Environment:
        return Environment(
            backend=self.name,
            prefix=str(prefix),
            python=str(prefix / "bin" / "python"),
            python_version=current_python_version(),
            variables={"VIRTUAL_ENV": str(prefix)},
        )

    def create_command(self, prefix: Path, *, seed: bool = True) -> list[str]:
        if self.installer.uv is not None:
            command = [self.installer.uv, "venv", "--quiet", "--python", sys.executable]
            return [*command, *(["--seed"] if seed else []), str(prefix)]
        return [sys.executable, "-m", "venv", str(prefix)]

    def _create(self, prefix: Path, command: list[str]) -> None:
        logger.info("creating a virtual environment at %s", prefix)
        env = {**_plain_env(), **self.installer.variables()}
        attempts = [command]
        if "--seed" in command:
            # seed packages from uv's cache when it has them (no network); else from the index
            attempts.insert(0, [*command[:-1], "--offline", command[-1]])
        for number, attempt in enumerate(attempts, start=1):
            result = subprocess.run(attempt, capture_output=True, text=True, env=env, check=False)
            if result.returncode == 0:
                return
            shutil.rmtree(prefix, ignore_errors=True)
            if number == len(attempts):
                raise InstallError(
                    "create environment",
                    " ".join(attempt),
                    result.returncode,
                    result.stdout + result.stderr,
                )

    def _upgrade_pip(self, prefix: Path, request: EnvRequest) -> None:
        """pip resolves as of a date from pip 26 on: bring the new environment's pip there."""
        python = str(prefix / "bin" / "python")
        version = pip_version(python)
        if version is not None and version >= PIP_WITH_CUTOFF:
            return
        logger.info(
            "upgrading pip %s in the new environment: resolving as of %s needs pip 26",
            ".".join(map(str, version)) if version else "(none)",
            request.cutoff.iso,
        )
        if self.installer.uv is not None:
            command = [self.installer.uv, "pip", "install", "--python", python, "pip>=26"]
        else:
            command = [python, "-m", "pip", "install", "--quiet", "--upgrade", "pip>=26"]
        env = {**_plain_env(), **self.installer.variables()}
        result = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
        if result.returncode != 0:
            shutil.rmtree(prefix, ignore_errors=True)
            raise InstallError(
                "upgrade pip", " ".join(command), result.returncode, result.stdout + result.stderr
            )

    def prepare(self, request: EnvRequest) -> PreparedEnv:
        self.warn_python(request.plan, current_python_version())
        found = None if request.force else self.complete(request)
        if found is not None:
            return PreparedEnv(self._environment(found), reused=True)
        prefix = self.location(request)
        prefix.parent.mkdir(parents=True, exist_ok=True)
        self._create(prefix, self.create_command(prefix, seed=self.needs_pip(request.plan)))
        if request.cutoff.iso and self.needs_pip(request.plan):
            self._upgrade_pip(prefix, request)
        return PreparedEnv(self._environment(prefix))

    def finish(self, request: EnvRequest, prepared: PreparedEnv) -> None:
        assert prepared.environment.prefix is not None
        (Path(prepared.environment.prefix) / COMPLETE).write_text("done\n")

    def discard(self, request: EnvRequest, prepared: PreparedEnv) -> None:
        # Only ever an environment this pack made: a bundle's environment is never prepared
        # for steps, it is reused as it is.
        if prepared.environment.prefix and not prepared.reused:
            shutil.rmtree(prepared.environment.prefix, ignore_errors=True)


def _plain_env() -> dict[str, str]:
    """The current environment without a cut-off the user set for their own installs."""
    return {
        name: value
        for name, value in os.environ.items()
        if name not in ("UV_EXCLUDE_NEWER", "VIRTUAL_ENV")
    }
