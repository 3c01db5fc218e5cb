"""A base image that cannot be pulled (no network, here a registry that refuses) is said to
be one, with --base as the way out, on the real podman."""

from __future__ import annotations

from pathlib import Path

from helpers import FIXTURES, run_command

# a registry on a closed local port: refused at once, whatever network the machine has
UNREACHABLE = "localhost:1/nothing/python:3.11-slim"


def test_a_base_image_that_cannot_be_pulled_says_to_pass_base(tmp_path: Path) -> None:
    result = run_command(
        "ersilia_pack", "containerize", "--model_dir", FIXTURES / "stdlib-simple",
        "--engine", "podman", "--base", UNREACHABLE, timeout=180,
    )  # fmt: skip
    assert result.returncode == 4, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: the base image {UNREACHABLE} could not be pulled")
    assert "connection refused" in last
    assert "pass --base with an image this machine has (podman images lists them)" in last
    assert "command: " not in result.stderr  # not the failed build's whole command
