"""Install backends, one module each, picked by name from one registry."""

from __future__ import annotations

import importlib

from ersilia_pack.install.base import Backend
from ersilia_pack.install.installer import Installer

BACKENDS: dict[str, str] = {
    "system": "ersilia_pack.install.system:SystemBackend",
    "venv": "ersilia_pack.install.venv:VenvBackend",
    "conda": "ersilia_pack.install.conda:CondaBackend",
}


def get_backend(name: str, installer: Installer | None = None) -> Backend:
    """The backend registered under ``name``, installing pip steps with ``installer``."""
    module_name, _, class_name = BACKENDS[name].partition(":")
    backend_class = getattr(importlib.import_module(module_name), class_name)
    backend: Backend = backend_class(installer)
    return backend


__all__ = ["BACKENDS", "Backend", "Installer", "get_backend"]
