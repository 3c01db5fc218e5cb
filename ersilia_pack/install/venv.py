"""The venv backend: an isolated environment inside the model's repository folder.

uv makes it when uv is on PATH, else the standard library's venv with pip. An environment is
made for one install plan and reused by later packs of the same plan.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import sys
from pathlib import Path

from ersilia_pack.errors import InstallError
from ersilia_pack.install.base import (
    Backend,
    EnvRequest,
    PreparedEnv,
    current_python_version,
    environment_key,
    which,
)
from ersilia_pack.runtime.bundle.environment import Environment

logger = logging.getLogger("ersilia_pack")
ENVS_DIR = ".envs"
COMPLETE = ".ersilia-pack-complete"
# pip flags that uv's pip interface takes with the same meaning; a step with any other flag
# (--no-cache-dir, --trusted-host, --user, ...) runs with pip, which uv seeds into the venv.
# fmt: off
UV_PIP_FLAGS = frozenset({
    "-r", "--requirement", "-e", "--editable", "-c", "--constraint", "-i", "--index-url",
    "--extra-index-url", "-f", "--find-links", "--no-index", "--no-deps", "-U", "--upgrade",
    "--no-build-isolation", "--no-binary", "--only-binary", "-q", "--quiet", "-v", "--verbose",
})
# fmt: on


class VenvBackend(Backend):
    """Isolation without conda."""

    name = "venv"

    def __init__(self) -> None:
        self.uv = which("uv")

    def location(self, request: EnvRequest) -> Path:
        key = environment_key(request, self.name, current_python_version())
        return request.repository_dir / ENVS_DIR / key

    def _environment(self, prefix: Path) -> Environment:
        return Environment(
            backend=self.name,
            prefix=str(prefix),
            python=str(prefix / "bin" / "python"),
            python_version=current_python_version(),
            variables={"VIRTUAL_ENV": str(prefix)},
        )

    def create_command(self, prefix: Path) -> list[str]:
        if self.uv:
            return [self.uv, "venv", "--seed", "--python", sys.executable, str(prefix)]
        return [sys.executable, "-m", "venv", str(prefix)]

    def prepare(self, request: EnvRequest) -> PreparedEnv:
        self.warn_python(request.plan, current_python_version())
        prefix = self.location(request)
        if (prefix / COMPLETE).is_file() and not request.force:
            return PreparedEnv(self._environment(prefix), reused=True)
        shutil.rmtree(prefix, ignore_errors=True)
        prefix.parent.mkdir(parents=True, exist_ok=True)
        command = self.create_command(prefix)
        logger.info("creating a virtual environment at %s", prefix)
        result = subprocess.run(command, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            shutil.rmtree(prefix, ignore_errors=True)
            raise InstallError(
                "create environment",
                " ".join(command),
                result.returncode,
                result.stdout + result.stderr,
            )
        return PreparedEnv(self._environment(prefix))

    def pip_command(self, environment: Environment, args: list[str]) -> list[str]:
        """``uv pip install`` when uv is here and knows every flag; else the venv's own pip."""
        flags = {arg.split("=", 1)[0] for arg in args if arg.startswith("-")}
        if self.uv and flags <= UV_PIP_FLAGS:
            return [self.uv, "pip", "install", "--python", environment.python, *args]
        return super().pip_command(environment, args)

    def finish(self, request: EnvRequest, prepared: PreparedEnv) -> None:
        assert prepared.environment.prefix is not None
        (Path(prepared.environment.prefix) / COMPLETE).write_text("done\n")

    def discard(self, request: EnvRequest, prepared: PreparedEnv) -> None:
        if prepared.environment.prefix:
            shutil.rmtree(prepared.environment.prefix, ignore_errors=True)
