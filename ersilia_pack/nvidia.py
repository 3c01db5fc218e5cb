"""What ``nvidia-smi`` says of this machine's NVIDIA GPUs; nothing where it is missing or fails.

The pack asks it which install script fits the machine; the server, how many GPU slots to
make and how much GPU memory its processes hold.
"""

from __future__ import annotations

import re
import shutil
import subprocess

_GPU_LINE = re.compile(r"^GPU (\d+):")
TIMEOUT = 30.0


def nvidia_smi(*args: str) -> str | None:
    """What ``nvidia-smi ARGS`` printed; None without nvidia-smi, or when it fails."""
    path = shutil.which("nvidia-smi")
    if path is None:
        return None
    try:
        done = subprocess.run(
            [path, *args],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def gpu_lines() -> list[str]:
    """The GPUs ``nvidia-smi -L`` lists, a ``GPU <n>: <name> (UUID: ...)`` line each."""
    listing = nvidia_smi("-L") or ""
    return [line.strip() for line in listing.splitlines() if _GPU_LINE.match(line.strip())]


def gpu_indices() -> list[str]:
    """The indices of the GPUs ``nvidia-smi -L`` lists."""
    return [match.group(1) for line in gpu_lines() if (match := _GPU_LINE.match(line))]
