"""NVIDIA GPUs of this machine, as ``nvidia-smi`` reports them, for sizing GPU slots.

An API whose model runs on a GPU gets ``--gpu-workers`` processes per GPU (default one: one
model copy per GPU, micro-batching keeps it busy) instead of one per CPU, each process seeing
one GPU through ``CUDA_VISIBLE_DEVICES``; a legacy script on a GPU runs at most that many runs
at a time per GPU, so N CPU cores do not start N CUDA contexts.
"""

from __future__ import annotations

import os

from ersilia_pack import nvidia


def visible_gpus() -> list[str]:
    """The GPUs processes may use: ``CUDA_VISIBLE_DEVICES`` when set (empty: none), else the
    indices ``nvidia-smi -L`` lists; none without nvidia-smi."""
    given = os.environ.get("CUDA_VISIBLE_DEVICES")
    if given is not None:
        return [item.strip() for item in given.split(",") if item.strip() and item != "-1"]
    return nvidia.gpu_indices()


def gpu_slots(gpu_workers: int, gpus: int) -> int:
    """Processes (or runs at a time) for an API on the GPU: ``gpu_workers`` per GPU."""
    return max(1, gpu_workers) * max(1, gpus)


def gpu_memory_by_pid() -> dict[int, int]:
    """Bytes of GPU memory each process holds, from ``nvidia-smi --query-compute-apps``."""
    text = nvidia.nvidia_smi(
        "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"
    )
    found: dict[int, int] = {}
    for line in (text or "").splitlines():
        parts = [part.strip() for part in line.split(",")]
        if len(parts) == 2 and parts[0].isdigit() and parts[1].isdigit():
            found[int(parts[0])] = found.get(int(parts[0]), 0) + int(parts[1]) * 1024 * 1024
    return found
