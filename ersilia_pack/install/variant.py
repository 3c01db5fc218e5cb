"""Which install script a pack runs: the variant that fits this machine, or the one asked for.

``auto`` (the default) takes ``install_gpu.sh`` where an NVIDIA GPU is (``nvidia-smi -L``
lists one), ``install_arm.sh`` on arm64, and ``install.sh`` otherwise or when the model has
no such variant. ``default`` forces ``install.sh``; any other name forces
``install_<name>.sh``, which must then exist.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass
from pathlib import Path

from ersilia_pack import nvidia

AUTO = "auto"
DEFAULT = "default"
GPU = "gpu"
ARM = "arm"
ARM_MACHINES = frozenset({"arm64", "aarch64"})


@dataclass(frozen=True)
class VariantChoice:
    """``name`` is None for plain ``install.sh``; ``reason`` says why, for a person."""

    name: str | None
    reason: str

    @property
    def file(self) -> str:
        return f"install_{self.name}.sh" if self.name else "install.sh"

    @property
    def label(self) -> str:
        """The variant as the manifest records it: ``gpu``, ``arm``, ... or ``default``."""
        return self.name or DEFAULT


def nvidia_gpu() -> str | None:
    """The first GPU ``nvidia-smi -L`` lists (``GPU 0: ...``); None without one, or when
    nvidia-smi is missing or fails."""
    return next(iter(nvidia.gpu_lines()), None)


def choose_variant(model_dir: Path, requested: str | None = None) -> VariantChoice:
    """The install script for ``requested`` (None or 'auto': what fits this machine)."""
    requested = (requested or AUTO).strip()
    if requested == DEFAULT:
        return VariantChoice(None, "--variant default")
    if requested != AUTO:
        return VariantChoice(requested, f"--variant {requested}")
    has = {name: (model_dir / f"install_{name}.sh").is_file() for name in (GPU, ARM)}
    if not any(has.values()):
        return VariantChoice(None, "the model has no install_gpu.sh nor install_arm.sh")
    notes: list[str] = []
    if has[GPU]:
        gpu = nvidia_gpu()
        if gpu is not None:
            return VariantChoice(GPU, f"an NVIDIA GPU is here: {gpu}")
        notes.append("no NVIDIA GPU here (nvidia-smi -L lists none)")
    machine = platform.machine().lower()
    if has[ARM]:
        if machine in ARM_MACHINES:
            return VariantChoice(ARM, f"this machine is {machine}")
        notes.append(f"this machine is {machine or 'unknown'}, not arm64")
    return VariantChoice(None, "; ".join(notes))
