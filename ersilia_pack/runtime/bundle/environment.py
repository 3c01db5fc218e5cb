"""The environment a model runs in: a prefix whose bin/ goes first on PATH."""

from __future__ import annotations

import os
from pathlib import Path

from pydantic import BaseModel


class Environment(BaseModel):
    """Where a model's installs went and where its scripts run.

    ``prefix`` is a virtual environment or conda prefix; ``None`` means the system
    environment (the current interpreter and PATH).
    """

    backend: str
    prefix: str | None = None
    python: str
    python_version: str = ""
    variables: dict[str, str] = {}

    @property
    def bin_dir(self) -> Path:
        """The directory that goes first on PATH."""
        if self.prefix is None:
            return Path(self.python).parent
        return Path(self.prefix) / "bin"

    def process_env(self, base: dict[str, str] | None = None) -> dict[str, str]:
        """Environment variables for a process that must run inside this environment."""
        env = dict(os.environ if base is None else base)
        env["PATH"] = os.pathsep.join([str(self.bin_dir), env.get("PATH", os.defpath)])
        env.pop("PYTHONHOME", None)
        env.pop("ERSILIA_PACK_API_KEY", None)  # model code never needs the server's keys
        env.update(self.variables)
        # Scripts print through pipes; unbuffered output keeps logs in order.
        env.setdefault("PYTHONUNBUFFERED", "1")
        return env
