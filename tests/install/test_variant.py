"""The install script follows the machine: install_gpu.sh where nvidia-smi lists a GPU,
install_arm.sh on arm64, else install.sh; --variant default and --variant NAME force one.

The GPU is a stand-in (tests/standins/nvidia-smi, put first on PATH; it is NOT nvidia-smi),
since the machines these tests run on have none; the packs are real (--system, with the
example check skipped: the scripts only say which one ran)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from helpers import FIXTURES, ROOT, run_command, write_tree

from ersilia_pack.install import variant as variant_module
from ersilia_pack.install.variant import choose_variant
from ersilia_pack.pack import pack

pytestmark = pytest.mark.slow
MODEL = FIXTURES / "install-for-machine"
STANDIN = ROOT / "tests" / "standins" / "nvidia-smi"
H200 = "GPU 0: NVIDIA H200 (UUID: GPU-00000000-0000-0000-0000-000000000000)"


def _path_without_nvidia_smi(tmp_path: Path) -> str:
    """PATH with no nvidia-smi on it (a real one is left out; bash stays reachable)."""
    kept = [
        folder
        for folder in os.environ["PATH"].split(os.pathsep)
        if folder and not (Path(folder) / "nvidia-smi").exists()
    ]
    tools = tmp_path / "tools"
    tools.mkdir()
    bash = shutil.which("bash")
    assert bash is not None
    (tools / "bash").symlink_to(bash)
    return os.pathsep.join([str(tools), *kept])


def _gpu_env(tmp_path: Path, listing: str | None, exit_code: int = 0) -> dict[str, str]:
    """Environment for ersilia_pack: the nvidia-smi stand-in listing ``listing`` (None: no
    nvidia-smi on PATH at all)."""
    path = _path_without_nvidia_smi(tmp_path)
    if listing is None:
        return {"PATH": path}
    standin = tmp_path / "standin-bin"
    standin.mkdir()
    (standin / "nvidia-smi").symlink_to(STANDIN)
    return {
        "PATH": os.pathsep.join([str(standin), path]),
        "NVIDIA_SMI_STANDIN_OUTPUT": listing,
        "NVIDIA_SMI_STANDIN_EXIT": str(exit_code),
    }


def _pack(tmp_path: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return run_command(
        "ersilia_pack",
        "--model_dir",
        MODEL,
        "--system",
        "--no-check",
        "--eos",
        tmp_path / "eos",
        *args,
        env=env,
    )


def _install(done: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert done.returncode == 0, done.stderr
    bundle = Path(done.stdout.strip().rsplit(" into ", 1)[1])
    install: dict[str, Any] = json.loads((bundle / "manifest.json").read_text())["install"]
    install["plan"] = (bundle / "installs" / "install.sh").read_text()
    return install


def test_a_machine_with_an_nvidia_gpu_runs_install_gpu_sh(tmp_path: Path) -> None:
    done = _pack(tmp_path, _gpu_env(tmp_path, H200))

    install = _install(done)
    assert f"install file: install_gpu.sh (an NVIDIA GPU is here: {H200})" in done.stderr
    assert "[install_gpu.sh] install_gpu.sh ran" in done.stderr
    assert (install["variant"], install["variant_reason"]) == (
        "gpu",
        f"an NVIDIA GPU is here: {H200}",
    )
    assert 'echo "install_gpu.sh ran"' in install["plan"]


@pytest.mark.parametrize(
    ("listing", "exit_code"),
    [
        (None, 0),  # no nvidia-smi on PATH
        ("No devices were found", 6),  # what the real one says without a GPU
        ("", 0),  # it answers, listing nothing
    ],
    ids=["no-nvidia-smi", "no-devices", "empty-listing"],
)
def test_without_a_gpu_install_sh_runs(tmp_path: Path, listing: str | None, exit_code: int) -> None:
    done = _pack(tmp_path, _gpu_env(tmp_path, listing, exit_code))

    install = _install(done)
    assert "install file: install.sh (no NVIDIA GPU here (nvidia-smi -L lists none)" in done.stderr
    assert "[install.sh] install.sh ran" in done.stderr
    assert "install_gpu.sh ran" not in done.stderr
    assert install["variant"] == "default"


def test_variant_default_forces_install_sh_and_a_name_forces_its_script(tmp_path: Path) -> None:
    with_gpu = _gpu_env(tmp_path, H200)

    forced_plain = _install(_pack(tmp_path, with_gpu, "--variant", "default"))
    forced_arm = _pack(tmp_path, with_gpu, "--variant", "arm")
    missing = _pack(tmp_path, with_gpu, "--variant", "cuda12")

    assert (forced_plain["variant"], forced_plain["variant_reason"]) == (
        "default",
        "--variant default",
    )
    assert "[install_arm.sh] install_arm.sh ran" in forced_arm.stderr
    assert _install(forced_arm)["variant"] == "arm"
    assert missing.returncode == 1
    assert "install_cuda12.sh: is missing, but variant 'cuda12' was asked for" in missing.stderr


def test_an_arm64_machine_runs_install_arm_sh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(variant_module.platform, "machine", lambda: "aarch64")
    monkeypatch.setenv("PATH", _path_without_nvidia_smi(tmp_path))

    with caplog.at_level("INFO", logger="ersilia_pack"):
        result = pack(MODEL, backend="system", repository_root=tmp_path / "repo", check=False)

    manifest = json.loads((result.bundle_dir / "manifest.json").read_text())
    assert (manifest["install"]["variant"], manifest["install"]["variant_reason"]) == (
        "arm",
        "this machine is aarch64",
    )
    assert "[install_arm.sh] install_arm.sh ran" in caplog.text
    assert (
        'echo "install_arm.sh ran"' in (result.bundle_dir / "installs" / "install.sh").read_text()
    )


def test_a_missing_variant_falls_back_to_install_sh(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = write_tree(tmp_path / "model", {"install.sh": "echo plain\n"})
    monkeypatch.setenv("PATH", _path_without_nvidia_smi(tmp_path))
    monkeypatch.setattr(variant_module.platform, "machine", lambda: "arm64")
    assert choose_variant(model).file == "install.sh"
    (model / "install_arm.sh").write_text("echo arm\n")
    assert choose_variant(model).file == "install_arm.sh"
    assert choose_variant(model, "default").file == "install.sh"
    monkeypatch.setattr(variant_module.platform, "machine", lambda: "x86_64")
    choice = choose_variant(model)
    assert (choice.file, choice.reason) == ("install.sh", "this machine is x86_64, not arm64")
