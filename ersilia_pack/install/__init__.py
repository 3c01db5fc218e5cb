"""Install backends, one module each, picked by name from one registry."""

from __future__ import annotations

import importlib

from ersilia_pack.install.base import Backend

BACKENDS: dict[str, str] = {
    "system": "ersilia_pack.install.system:SystemBackend",
    "venv": "ersilia_pack.install.venv:VenvBackend",
    "conda": "ersilia_pack.install.conda:CondaBackend",
}


def get_backend(name: str) -> Backend:
    """The backend registered under ``name``."""
    module_name, _, class_name = BACKENDS[name].partition(":")
    backend_class = getattr(importlib.import_module(module_name), class_name)
    backend: Backend = backend_class()
    return backend


__all__ = ["BACKENDS", "Backend", "get_backend"]
