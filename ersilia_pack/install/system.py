"""The system backend: installs with the current interpreter and PATH (what a container wants)."""

from __future__ import annotations

import sys

from ersilia_pack.install.base import Backend, EnvRequest, PreparedEnv, current_python_version
from ersilia_pack.runtime.bundle.environment import Environment


class SystemBackend(Backend):
    """No isolation: ``pip`` and ``python`` are the ones running ersilia_pack (structured
    steps go through ``uv pip install --python`` that interpreter unless the installer is pip).
    """

    name = "system"

    def prepare(self, request: EnvRequest) -> PreparedEnv:
        version = current_python_version()
        self.warn_python(request.plan, version)
        environment = Environment(
            backend=self.name, prefix=None, python=sys.executable, python_version=version
        )
        self.pip_follows_cutoff(environment, request)
        return PreparedEnv(environment)
