"""Pipes, sockets and devices in a model directory are refused at validation, naming each,
before anything reads them: opening a named pipe to hash or copy it never returns."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

from security_helpers import FIXTURES, console_script


def lint(model_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [console_script("ersilia_model_lint"), "--repo_path", str(model_dir)],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def pack(model_dir: Path, eos: Path) -> subprocess.CompletedProcess[str]:
    # A pack that opens the pipe hangs: the timeout fails the test instead.
    return subprocess.run(
        [
            console_script("ersilia_pack"),
            *("--model_dir", str(model_dir), "--system", "--eos", str(eos)),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def test_a_named_pipe_and_a_socket_are_refused_at_pack_naming_each(tmp_path: Path) -> None:
    model = Path(shutil.copytree(FIXTURES / "stdlib-simple", tmp_path / "model"))
    os.mkfifo(model / "model" / "checkpoints" / "weights.bin")
    listener = socket.socket(socket.AF_UNIX)
    try:
        listener.bind(str(model / "model" / "framework" / "helper.sock"))
        done = pack(model, tmp_path / "eos")
    finally:
        listener.close()
    assert done.returncode == 1, done.stdout + done.stderr
    assert (
        "model/checkpoints/weights.bin: is a named pipe (FIFO), not a regular file" in done.stderr
    )
    assert "model/framework/helper.sock: is a socket, not a regular file" in done.stderr
    assert not (tmp_path / "eos" / "repository").exists()


def test_a_pipe_named_as_the_metadata_is_refused_before_it_is_read(tmp_path: Path) -> None:
    model = Path(shutil.copytree(FIXTURES / "stdlib-simple", tmp_path / "model"))
    (model / "metadata.yml").unlink()
    os.mkfifo(model / "metadata.yml")
    done = lint(model)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "metadata.yml: is a named pipe (FIFO), not a regular file" in done.stderr
