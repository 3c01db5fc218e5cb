"""The project's errors: each knows its exit code and how to show itself to a user."""

from __future__ import annotations

from dataclasses import dataclass


class ErsiliaPackError(Exception):
    """Base class of every error ersilia_pack reports to a user."""

    exit_code = 4

    def render(self) -> str:
        """The message shown to a person, without a traceback."""
        return str(self)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a model directory: where, what, and how to fix it."""

    file: str
    message: str
    fix: str = ""

    def __str__(self) -> str:
        text = f"{self.file}: {self.message}"
        return f"{text} ({self.fix})" if self.fix else text


class ModelDirError(ErsiliaPackError):
    """The model directory (or the arguments naming it) is invalid."""

    exit_code = 1

    def __init__(self, problems: list[Problem], model_dir: str = "") -> None:
        self.problems = problems
        self.model_dir = model_dir
        super().__init__(self.render())

    def render(self) -> str:
        where = f" in {self.model_dir}" if self.model_dir else ""
        count = len(self.problems)
        head = f"{count} problem{'s' if count != 1 else ''}{where}:"
        return "\n".join([head, *(f"  - {problem}" for problem in self.problems)])


class InstallError(ErsiliaPackError):
    """An install step failed; keeps its command, exit code and the tail of its output."""

    exit_code = 3

    def __init__(self, step: str, command: str, returncode: int | None, tail: str) -> None:
        self.step = step
        self.command = command
        self.returncode = returncode
        self.tail = tail
        super().__init__(self.render())

    def render(self) -> str:
        status = "timed out" if self.returncode is None else f"exited with {self.returncode}"
        lines = [f"install step '{self.step}' failed: {status}", f"  command: {self.command}"]
        if self.tail.strip():
            lines.append("  last lines of its output:")
            lines.extend(f"    {line}" for line in self.tail.rstrip().splitlines())
        return "\n".join(lines)


class PlanError(ErsiliaPackError):
    """The install plan cannot run with the chosen backend (e.g. a conda step under venv)."""

    exit_code = 1


class SettingsError(ErsiliaPackError):
    """A serve setting (an ERSILIA_PACK_* variable) has a value that cannot be used."""

    exit_code = 1


class RenderError(ErsiliaPackError):
    """Rendering the bundle, or checking it against the model's examples, failed."""

    exit_code = 4


class ServeError(ErsiliaPackError):
    """The bundle cannot be served."""

    exit_code = 4
