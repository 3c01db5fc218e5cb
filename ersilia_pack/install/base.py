"""What every install backend does: make an environment, turn steps into commands, run them."""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from ersilia_pack.errors import InstallError, PlanError
from ersilia_pack.install.cutoff import Cutoff
from ersilia_pack.install.index_map import explain_unreachable, unreachable
from ersilia_pack.install.installer import (
    PIP_WITH_CUTOFF,
    Installer,
    failed_to_resolve,
    pip_version,
)
from ersilia_pack.install.plan import InstallPlan, InstallStep
from ersilia_pack.install.translate import Translation, translate
from ersilia_pack.runtime.bundle.environment import Environment

logger = logging.getLogger("ersilia_pack")
TAIL_LINES = 25
NO_CUTOFF = Cutoff(None, "latest", "not asked for")
# pip flags that uv's pip interface takes with the same meaning; a step with any other flag
# (--no-cache-dir, --trusted-host, --user, ...) runs with the environment's own pip.
# fmt: off
UV_PIP_FLAGS = frozenset({
    "-r", "--requirement", "-e", "--editable", "-c", "--constraint", "-i", "--index-url",
    "--extra-index-url", "-f", "--find-links", "--no-index", "--no-deps", "-U", "--upgrade",
    "--no-build-isolation", "--no-binary", "--only-binary", "-q", "--quiet", "-v", "--verbose",
})
# fmt: on


@dataclass(frozen=True)
class EnvRequest:
    """Where and for whom an environment is wanted, and how its steps resolve."""

    model_id: str
    repository_dir: Path
    plan: InstallPlan
    env_name: str | None = None
    force: bool = False
    cutoff: Cutoff = NO_CUTOFF
    tag: str = ""


@dataclass(frozen=True)
class PreparedEnv:
    """An environment ready for the plan; ``reused`` means its steps already ran.

    ``without_cutoff`` names the steps that were resolved again without the cut-off date.
    """

    environment: Environment
    reused: bool = False
    without_cutoff: list[str] = field(default_factory=list)


def current_python_version() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


class Backend:
    """Base class of install backends; subclasses live in one module each.

    ``installer`` installs the structured pip steps (a pack passes uv unless asked for pip;
    a backend made without one uses pip).
    """

    name = ""
    runs_conda_steps = False

    def __init__(self, installer: Installer | None = None) -> None:
        self.installer = installer or Installer(name="pip")

    def translate(self, plan: InstallPlan) -> Translation:
        """The plan as this backend runs it: conda steps become pip ones (or stop the pack)
        unless the backend runs conda itself; PlanError before anything runs."""
        if self.runs_conda_steps:
            return Translation(plan=plan, decisions=[])
        return translate(plan, self.name)

    def check(self, plan: InstallPlan) -> None:
        """Refuse a plan this backend cannot run, before anything runs."""
        self.translate(plan)

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

    def uses_uv(self, args: list[str]) -> bool:
        """True when uv installs this pip step: uv is the installer and knows every flag."""
        flags = {arg.split("=", 1)[0] for arg in args if arg.startswith("-")}
        return self.installer.uv is not None and flags <= UV_PIP_FLAGS

    def needs_pip(self, plan: InstallPlan) -> bool:
        """True when some step runs the environment's own pip (bash lines may call it)."""
        return any(
            step.kind == "bash" or (step.kind == "pip" and not self.uses_uv(step.args))
            for step in plan.steps
        )

    def pip_command(self, environment: Environment, args: list[str]) -> list[str]:
        """``uv pip install`` when uv installs, else the environment's own pip."""
        if self.uses_uv(args):
            assert self.installer.uv is not None
            return [
                self.installer.uv,
                *("pip", "install", "--python", environment.python),
                *_uv_index_args(args),
            ]
        return [environment.python, "-m", "pip", "install", *args]

    def pip_follows_cutoff(self, environment: Environment, request: EnvRequest) -> bool:
        """Whether the environment's pip can resolve as of a date (pip 26 and later).

        Warns when it cannot although a step runs pip with a cut-off set; backends that own
        their environment upgrade pip instead.
        """
        if request.cutoff.iso is None or not self.needs_pip(request.plan):
            return True
        version = pip_version(environment.python)
        if version is not None and version >= PIP_WITH_CUTOFF:
            return True
        logger.warning(
            "pip %s in %s cannot resolve as of %s (pip 26 can): steps run with that pip take "
            "the newest packages; upgrade pip there to apply the cut-off",
            ".".join(map(str, version)) if version else "(none)",
            environment.prefix or environment.python,
            request.cutoff.iso,
        )
        return False

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


def _uv_index_args(args: list[str]) -> list[str]:
    """pip's ``--index-url`` as uv's ``--default-index``: uv lets ``UV_DEFAULT_INDEX`` win over
    an ``--index-url`` given on the command line, but not over ``--default-index``, and a step
    that names its index must get that index."""
    mapped: list[str] = []
    for arg in args:
        if arg in ("-i", "--index-url"):
            mapped.append("--default-index")
        elif arg.startswith("--index-url="):
            mapped.append("--default-index=" + arg.split("=", 1)[1])
        else:
            mapped.append(arg)
    return mapped


def run_step(
    step: InstallStep,
    command: list[str],
    environment: Environment,
    cwd: Path,
    *,
    variables: dict[str, str] | None = None,
) -> None:
    """Run one install step, streaming its output under its name; InstallError on failure."""
    env = environment.process_env()
    env.update({"PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"})
    env.update(variables or {})
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


def _run_with_cutoff(
    backend: Backend, step: InstallStep, request: EnvRequest, environment: Environment, cwd: Path
) -> bool:
    """Run a step as of the cut-off; when nothing fits only because of it (a pinned version
    uploaded later, say), run it again without. True when the cut-off was dropped."""
    command = backend.command(step, environment)
    variables = backend.installer.variables()
    cut = request.cutoff.variables()
    try:
        run_step(step, command, environment, cwd, variables={**variables, **cut})
    except InstallError as error:
        # an index that cannot be reached fails the same way without the cut-off
        if not cut or not failed_to_resolve(error.tail) or unreachable(error.tail):
            raise
        logger.warning(
            "step %s: nothing fits with packages uploaded before %s; resolving it again "
            "without the cut-off",
            step.name,
            request.cutoff.iso,
        )
        run_step(step, command, environment, cwd, variables=variables)
        logger.warning("step %s: resolved without the cut-off date", step.name)
        return True
    return False


def install(backend: Backend, request: EnvRequest, *, cwd: Path) -> PreparedEnv:
    """Prepare the environment and run every step; the first failing step stops the install."""
    prepared = backend.prepare(request)
    if prepared.reused:
        logger.info(
            "reusing environment %s: its install steps already ran", prepared.environment.prefix
        )
        return prepared
    total = len(request.plan.steps)
    dropped: list[str] = []
    try:
        for number, step in enumerate(request.plan.steps, start=1):
            logger.info("install %d/%d", number, total)
            try:
                if _run_with_cutoff(backend, step, request, prepared.environment, cwd):
                    dropped.append(step.name)
            except InstallError as error:
                explained = explain_unreachable(error, step)
                if explained is error:
                    raise
                raise explained from error
    except BaseException:
        backend.discard(request, prepared)
        raise
    backend.finish(request, prepared)
    return dataclasses.replace(prepared, without_cutoff=dropped)


def environment_key(request: EnvRequest, backend: str, python: str, installer: str) -> str:
    """A short name for an environment made for exactly this plan, installer and cut-off."""
    text = "\n".join(
        [backend, python, installer, request.cutoff.iso or "latest", request.plan.as_script()]
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def which(name: str) -> str | None:
    """An executable on PATH."""
    return shutil.which(name, path=os.environ.get("PATH"))
