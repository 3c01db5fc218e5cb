"""Importing a bundle's generated app without clashing with other bundles in one process."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from fastapi import FastAPI

from ersilia_pack.errors import ServeError
from ersilia_pack.runtime.settings import ServeSettings


def _package_name(app_dir: Path) -> str:
    return "ersilia_bundle_" + hashlib.sha256(str(app_dir).encode()).hexdigest()[:12]


def _import_app_package(bundle_dir: Path) -> ModuleType:
    app_dir = bundle_dir / "app"
    name = _package_name(app_dir)
    if name in sys.modules:
        return importlib.import_module(f"{name}.main")
    spec = importlib.util.spec_from_file_location(
        name, app_dir / "__init__.py", submodule_search_locations=[str(app_dir)]
    )
    if spec is None or spec.loader is None:
        raise ServeError(f"{app_dir} is not an app package")
    package = importlib.util.module_from_spec(spec)
    sys.modules[name] = package
    spec.loader.exec_module(package)
    return importlib.import_module(f"{name}.main")


def create_bundle_app(bundle_dir: Path, settings: ServeSettings | None = None) -> FastAPI:
    """The app of the bundle at ``bundle_dir``, from its generated ``app/main.py``."""
    bundle_dir = bundle_dir.resolve()
    if not (bundle_dir / "app" / "main.py").is_file():
        raise ServeError(f"{bundle_dir} has no app/main.py: repack the model")
    try:
        main = _import_app_package(bundle_dir)
    except ServeError:
        raise
    except Exception as error:
        raise ServeError(f"the app of {bundle_dir.name} failed to import: {error}") from error
    app: FastAPI = main.create_app(settings)
    return app


def forget_bundle_app(bundle_dir: Path) -> None:
    """Drop an imported bundle app's modules (a pack imports its staging bundle's app once)."""
    name = _package_name(bundle_dir.resolve() / "app")
    for module in [key for key in sys.modules if key == name or key.startswith(name + ".")]:
        del sys.modules[module]
