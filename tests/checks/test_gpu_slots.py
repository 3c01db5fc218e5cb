"""GPU slots: one model process per GPU (``--gpu-workers`` per GPU), not one per CPU.

No GPU here: `tests/standins/nvidia-smi` (a stand-in, NOT nvidia-smi) lists the GPUs a test
asks for, and `cuda-like-load-once` stands in for a model moved to CUDA in load(): it raises
CUDA's own message in a process forked after load(). The pack sees that refusal and records
that the API runs on a GPU; the server then starts one process per listed GPU, each seeing
its own GPU through CUDA_VISIBLE_DEVICES.
"""

from __future__ import annotations

import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from helpers import ROOT, pack_fixture, processes_mentioning, served

from ersilia_pack.runtime.engine import gpus

pytestmark = pytest.mark.slow

STANDINS = ROOT / "tests" / "standins"
THREE_GPUS = "\n".join(f"GPU {n}: NVIDIA H200 (UUID: GPU-standin-{n})" for n in range(3))


def on_path(monkeypatch: pytest.MonkeyPatch, listing: str) -> None:
    monkeypatch.setenv("PATH", f"{STANDINS}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.setenv("NVIDIA_SMI_STANDIN_OUTPUT", listing)
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)


def test_the_gpus_are_those_nvidia_smi_lists_unless_cuda_visible_devices_says(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    on_path(monkeypatch, THREE_GPUS)
    assert gpus.visible_gpus() == ["0", "1", "2"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,0")
    assert gpus.visible_gpus() == ["2", "0"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert gpus.visible_gpus() == []
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    monkeypatch.setenv("NVIDIA_SMI_STANDIN_OUTPUT", "")
    assert gpus.visible_gpus() == []
    assert (gpus.gpu_slots(1, 3), gpus.gpu_slots(2, 3), gpus.gpu_slots(1, 1)) == (3, 6, 1)
    monkeypatch.setenv("NVIDIA_SMI_STANDIN_APPS", "4242, 712\n77, 10")
    assert gpus.gpu_memory_by_pid() == {4242: 712 * 2**20, 77: 10 * 2**20}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    packed = pack_fixture("cuda-like-load-once", tmp_path_factory.mktemp("repository"))
    (api,) = json.loads((packed / "manifest.json").read_text())["apis"]
    assert api["decided"]["fork"] is False and api["decided"]["gpu"] is True, api
    return packed


def test_a_gpu_api_gets_one_process_per_gpu_each_seeing_its_own(
    bundle: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    on_path(monkeypatch, THREE_GPUS)
    marker = str(bundle / "app" / "worker.py")
    inputs = [["C" * k, "N" * (k + 1)] for k in range(1, 41)]
    with served(bundle, "--cache-size", "0") as url:
        deadline = time.monotonic() + 60
        while httpx.get(f"{url}/readyz", timeout=10).status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        ready = httpx.get(f"{url}/readyz", timeout=10).json()
        workers = processes_mentioning(marker)
        devices = sorted(
            dict(
                line.split(b"=", 1)
                for line in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
                if b"=" in line
            ).get(b"CUDA_VISIBLE_DEVICES", b"-")
            for pid in workers
        )
        monkeypatch.setenv("NVIDIA_SMI_STANDIN_APPS", "\n".join(f"{p}, 700" for p in workers))
        with ThreadPoolExecutor(40) as pool:
            answers = list(pool.map(lambda v: httpx.post(f"{url}/run", json=v, timeout=60), inputs))
    # three GPUs listed, two CPUs here: three processes, one per GPU
    assert devices == [b"0", b"1", b"2"]
    assert ready["checks"]["run"]["device"] == "cuda (GPUs 0,1,2, 1 per GPU)"
    for values, answer in zip(inputs, answers):
        assert answer.status_code == 200, answer.text
        assert answer.json() == [{"length": len(v)} for v in values]


def test_gpu_workers_sets_processes_per_gpu_and_metrics_show_their_memory(
    bundle: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    on_path(monkeypatch, "GPU 0: NVIDIA H200 (UUID: GPU-standin-0)")
    apps = tmp_path / "compute-apps.csv"
    monkeypatch.setenv("NVIDIA_SMI_STANDIN_APPS_FILE", str(apps))
    marker = str(bundle / "app" / "worker.py")
    with served(bundle, "--cache-size", "0", "--gpu-workers", "2") as url:
        deadline = time.monotonic() + 60
        while httpx.get(f"{url}/readyz", timeout=10).status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        workers = processes_mentioning(marker)
        apps.write_text("".join(f"{pid}, {700 + k}\n" for k, pid in enumerate(workers)))
        text = httpx.get(f"{url}/metrics", timeout=10).text
    assert len(workers) == 2
    held = {
        int(line.split('pid="')[1].split('"')[0]): float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("ersilia_pack_gpu_memory_bytes{")
    }
    assert held == {pid: (700 + k) * 2**20 for k, pid in enumerate(workers)}
