"""The installers of structured steps: uv (the default, shipped as a dependency) or pip.

uv keeps one cache for every model and links files from it into each environment (hard
links, when the cache and the environment share a filesystem), so ten models with the same
heavy dependency cost one copy of it.
"""

from __future__ import annotations

import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from ersilia_pack.errors import PlanError

INSTALLERS = ("uv", "pip")


def default_installer(backend: str) -> str:
    """uv, except for ``--system``: a container's pip settings (``pip.conf``, which uv does
    not read) keep applying to the image it builds."""
    return "pip" if backend == "system" else "uv"


# pip learnt --uploaded-prior-to (PIP_UPLOADED_PRIOR_TO) in 26.0.
PIP_WITH_CUTOFF = (26, 0)
# What pip and uv print when no version fits: the only failures worth a retry without the
# cut-off (a pinned version uploaded after it is the usual cause).
_NOT_RESOLVED = re.compile(
    r"No matching distribution found|Could not find a version that satisfies"
    r"|No solution found when resolving|there is no version of|not found in the package registry"
    r"|requirements are unsatisfiable",
    re.IGNORECASE,
)


def uv_binary() -> str:
    """The uv executable of the ``uv`` package (never whatever is on PATH)."""
    try:
        import uv  # here, not at the top: only packs that use uv need it

        return str(uv.find_uv_bin())
    except (ImportError, FileNotFoundError) as error:
        raise PlanError(
            "uv is not installed with ersilia-pack (pip install uv), or pack with --installer pip"
        ) from error


def _device(path: Path) -> int | None:
    """The filesystem of ``path`` (its nearest existing parent)."""
    for candidate in (path, *path.parents):
        try:
            return candidate.stat().st_dev
        except OSError:
            continue
    return None


def _default_uv_cache() -> Path:
    """uv's own user cache folder (``$XDG_CACHE_HOME/uv`` or ``~/.cache/uv``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "uv"


@dataclass(frozen=True)
class Installer:
    """Which tool installs structured steps, and the cache uv shares between models."""

    name: str
    uv: str | None = None
    cache_dir: Path | None = None
    link_mode: str = "hardlink"

    def variables(self) -> dict[str, str]:
        """Environment variables for every install process (uv's cache and link mode)."""
        if self.name != "uv" or self.cache_dir is None:
            return {}
        return {"UV_CACHE_DIR": str(self.cache_dir), "UV_LINK_MODE": self.link_mode}


def make_installer(name: str, *, near: Path) -> Installer:
    """The installer ``name``; uv's cache is the user's (``UV_CACHE_DIR`` or uv's default)
    when it is on the filesystem of ``near`` (where environments are made), else a folder
    beside ``near``, so hard links work."""
    if name not in INSTALLERS:
        raise PlanError(f"--installer {name!r} is unknown: choose uv or pip")
    if name == "pip":
        return Installer(name="pip")
    binary = uv_binary()
    chosen = os.environ.get("UV_CACHE_DIR")
    cache = Path(chosen).expanduser() if chosen else _default_uv_cache()
    here = _device(near)
    if not chosen and here is not None and _device(cache) != here:
        cache = near / ".uv-cache"
    # Hard links need one filesystem; across two, uv copies (clone where it can).
    link_mode = "hardlink" if here is not None and _device(cache) == here else "copy"
    return Installer(name="uv", uv=binary, cache_dir=cache, link_mode=link_mode)


def pip_version(python: str) -> tuple[int, ...] | None:
    """The version of pip in ``python``'s environment, or None when it has none."""
    probe = (
        "import importlib.metadata as m\n"
        "try: print(m.version('pip'))\n"
        "except m.PackageNotFoundError: print('')\n"
    )
    try:
        result = subprocess.run(
            [python, "-I", "-c", probe], capture_output=True, text=True, timeout=60, check=False
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = result.stdout.strip()
    if result.returncode != 0 or not text:
        return None
    return tuple(int(part) for part in re.findall(r"\d+", text)[:3])


def failed_to_resolve(output: str) -> bool:
    """True when an installer's output says no version fitted (what a cut-off can cause)."""
    return bool(_NOT_RESOLVED.search(output))
