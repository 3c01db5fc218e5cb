"""What every install backend does: make an environment, turn steps into commands, run them."""

from __future__ import annotations

import collections
import hashlib
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from ersilia_pack.errors import InstallError, PlanError
from ersilia_pack.install.plan import InstallPlan, InstallStep
from ersilia_pack.runtime.bundle.environment import Environment

logger = logging.getLogger("ersilia_pack")
TAIL_LINES = 25


@dataclass(frozen=True)
class EnvRequest:
    """Where and for whom an environment is wanted."""

    model_id: str
    repository_dir: Path
    plan: InstallPlan
    env_name: str | None = None
    force: bool = False


@dataclass(frozen=True)
class PreparedEnv:
    """An environment ready for the plan; ``reused`` means its steps already ran."""

    environment: Environment
    reused: bool = False


def current_python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


class Backend:
    """Base class of install backends; subclasses live in one module each."""

    name = ""
    runs_conda_steps = False

    def check(self, plan: InstallPlan) -> None:
        """Refuse a plan this backend cannot run, before anything runs."""
        if self.runs_conda_steps:
            return
        for step in plan.steps:
            if step.kind == "conda" or step.uses_conda:
                raise PlanError(
                    f"install step '{step.name}' is a conda step ({step.display()[:200]}), "
                    f"which --{self.name} cannot run: pack with --conda"
                )

    def warn_python(self, plan: InstallPlan, have: str) -> None:
        """Warn when the model asks for another Python (major.minor) than this backend has."""
        if plan.python and ".".join(plan.python.strip().split(".")[:2]) != have:
            logger.warning(
                "the model asks for Python %s but --%s uses Python %s; use --conda to get %s",
                plan.python,
                self.name,
                have,
                plan.python,
            )

    def prepare(self, request: EnvRequest) -> PreparedEnv:
        raise NotImplementedError

    def pip_command(self, environment: Environment, args: list[str]) -> list[str]:
        return [environment.python, "-m", "pip", "install", *args]

    def conda_command(self, environment: Environment, args: list[str]) -> list[str]:
        raise PlanError(f"--{self.name} cannot run conda steps: pack with --conda")

    def command(self, step: InstallStep, environment: Environment) -> list[str]:
        """The exact command a step runs as."""
        if step.kind == "pip":
            return self.pip_command(environment, step.args)
        if step.kind == "conda":
            return self.conda_command(environment, step.args)
        return ["bash", "-e", "-c", step.script]

    def finish(self, request: EnvRequest, prepared: PreparedEnv) -> None:
        """Called after every step succeeded (e.g. to mark the environment complete)."""

    def discard(self, request: EnvRequest, prepared: PreparedEnv) -> None:
        """Called when a step failed (e.g. to remove a half-made environment)."""


def run_step(step: InstallStep, command: list[str], environment: Environment, cwd: Path) -> None:
    """Run one install step, streaming its output under its name; InstallError on failure."""
    env = environment.process_env()
    env.update({"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"})
    shown = f"bash {step.name}" if step.kind == "bash" and "\n" in step.script else step.display()
    logger.info("step %s: %s", step.name, shown[:200])
    recent: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
    try:
        process = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            errors="replace",
            start_new_session=True,
        )
    except OSError as error:
        raise InstallError(step.name, shown, 127, str(error)) from error
    with process:
        assert process.stdout is not None
        for line in process.stdout:
            line = line.rstrip()
            recent.append(line)
            logger.info("  [%s] %s", step.name, line)
        code = process.wait()
    if code != 0:
        # A whole install.sh shows as "bash install.sh", not as every line of the script.
        raise InstallError(step.name, shown, code, "\n".join(recent))


def install(backend: Backend, request: EnvRequest, *, cwd: Path) -> PreparedEnv:
    """Prepare the environment and run every step; the first failing step stops the install."""
    backend.check(request.plan)
    prepared = backend.prepare(request)
    if prepared.reused:
        logger.info(
            "reusing environment %s: its install steps already ran", prepared.environment.prefix
        )
        return prepared
    total = len(request.plan.steps)
    try:
        for number, step in enumerate(request.plan.steps, start=1):
            logger.info("install %d/%d", number, total)
            run_step(step, backend.command(step, prepared.environment), prepared.environment, cwd)
    except BaseException:
        backend.discard(request, prepared)
        raise
    backend.finish(request, prepared)
    return prepared


def environment_key(request: EnvRequest, backend: str, python: str) -> str:
    """A short name for an environment made for exactly this plan."""
    text = "\n".join([backend, python, request.plan.as_script()])
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def which(name: str) -> str | None:
    """An executable on PATH."""
    return shutil.which(name, path=os.environ.get("PATH"))
