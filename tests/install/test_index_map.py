"""An install step that names its own package index: when the index cannot be reached the
pack says which host and how to point the step at a mirror; ERSILIA_PACK_INDEX_MAP does so.

The unreachable index is http://127.0.0.1:9/simple (nothing listens on port 9); the mirror is
the local test index (tests/install/local_index.py)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from helpers import FIXTURES, run_command
from local_index import LocalIndex

from ersilia_pack.errors import InstallError, PlanError
from ersilia_pack.install.index_map import (
    UnreachableIndexError,
    explain_unreachable,
    map_indexes,
    named_indexes,
    parse_index_map,
)
from ersilia_pack.install.plan import InstallPlan, InstallStep

UNREACHABLE = "http://127.0.0.1:9/simple"
MODEL = FIXTURES / "install-own-index"
# What uv printed for `--index-url https://download.pytorch.org/whl/cpu` with no DNS.
UV_DNS_ERROR = """\
error: Failed to fetch: https://download.pytorch.org/whl/cpu/torch/
  cause: error sending request for url (https://download.pytorch.org/whl/cpu/torch/)
  cause: client error (Connect)
  cause: dns error
  cause: failed to lookup address information: Name or service not known"""


def _pack(eos: Path, env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    # uv retries a refused connection three times with a back-off; once is enough here
    env = {**env, "UV_HTTP_RETRIES": "0"}
    return run_command("ersilia_pack", "--model_dir", MODEL, "--venv", "--eos", eos, *args, env=env)


@pytest.mark.slow
def test_an_index_the_machine_cannot_reach_is_named_with_the_setting(
    eos: Path, index_env: dict[str, str]
) -> None:
    done = _pack(eos, index_env)

    assert done.returncode == 3, done.stderr
    assert "error: install step 'install.yml command 1' failed" in done.stderr
    assert (
        "the package index this step names could not be reached from this machine: "
        f"127.0.0.1:9 ({UNREACHABLE})"
    ) in done.stderr
    assert (
        f"point the step at a mirror with ERSILIA_PACK_INDEX_MAP='{UNREACHABLE}="
        "https://mirror.example/simple'"
    ) in done.stderr
    assert "Connection refused" in done.stderr  # the installer's own words stay shown
    assert "without the cut-off" not in done.stderr  # not retried: the date was not the cause
    assert "Traceback" not in done.stderr
    assert not (eos / "repository" / "install-own-index").exists()  # no half-made bundle


@pytest.mark.slow
def test_the_index_map_points_the_step_at_a_mirror(
    eos: Path, index_env: dict[str, str], package_index: LocalIndex
) -> None:
    mirror = package_index.simple
    env = {
        **index_env,
        "ERSILIA_PACK_INDEX_MAP": f"https://other.example/x={mirror}, {UNREACHABLE}={mirror}",
    }

    done = _pack(eos, env, "--strict")

    assert done.returncode == 0, done.stderr
    assert (
        f"step install.yml command 1: index {UNREACHABLE} -> {mirror} (ERSILIA_PACK_INDEX_MAP)"
    ) in done.stderr
    bundle = Path(done.stdout.strip().rsplit(" into ", 1)[1])
    plan = (bundle / "installs" / "install.sh").read_text()
    assert f"pip install alpha --index-url {mirror}" in plan
    assert UNREACHABLE not in plan
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["install"]["steps"] == [f"pip install alpha --index-url {mirror}"]
    # alpha 2.0 (as of the card's date) from the mirror: the example output
    assert "example check passed for run" in done.stderr


@pytest.mark.slow
def test_a_malformed_index_map_is_a_usage_error(eos: Path, index_env: dict[str, str]) -> None:
    done = _pack(eos, {**index_env, "ERSILIA_PACK_INDEX_MAP": "download.pytorch.org"})

    assert done.returncode == 1
    assert (
        "ERSILIA_PACK_INDEX_MAP: 'download.pytorch.org' is not FROM=TO with two http(s) URLs"
    ) in done.stderr
    assert not eos.exists()


def test_the_map_rewrites_urls_in_bash_lines_and_pip_arguments_and_nothing_else() -> None:
    mapping = parse_index_map(
        "https://download.pytorch.org/whl/cpu=https://mirror.example/whl/cpu/,"
        "https://data.pyg.org=https://pyg.mirror.example"
    )
    assert mapping == {
        "https://download.pytorch.org/whl/cpu": "https://mirror.example/whl/cpu",
        "https://data.pyg.org": "https://pyg.mirror.example",
    }
    plan = InstallPlan(
        steps=[
            InstallStep(
                name="install.sh",
                kind="bash",
                script="pip install torch --index-url https://download.pytorch.org/whl/cpu\n"
                "pip install x -f https://data.pyg.org/whl/torch-2.1.0+cpu.html\n"
                "pip install y --index-url https://download.pytorch.org/whl/cpu118\n",
            ),
            InstallStep(
                name="install.yml command 2",
                kind="pip",
                args=["torch==2.1.0", "--index-url=https://download.pytorch.org/whl/cpu/"],
            ),
        ]
    )

    bash, pip = map_indexes(plan, mapping).steps

    assert bash.script == (
        "pip install torch --index-url https://mirror.example/whl/cpu\n"
        "pip install x -f https://pyg.mirror.example/whl/torch-2.1.0+cpu.html\n"
        # another index that merely starts the same is left alone
        "pip install y --index-url https://download.pytorch.org/whl/cpu118\n"
    )
    assert pip.args == ["torch==2.1.0", "--index-url=https://mirror.example/whl/cpu/"]
    assert named_indexes(plan.steps[1]) == ["https://download.pytorch.org/whl/cpu"]


def test_uvs_dns_error_names_the_host_and_the_setting() -> None:
    step = InstallStep(
        name="install.sh",
        kind="bash",
        script="pip install torch==2.1.0 --index-url https://download.pytorch.org/whl/cpu\n",
    )
    error = InstallError("install.sh", "bash install.sh", 1, UV_DNS_ERROR)

    explained = explain_unreachable(error, step)

    assert isinstance(explained, UnreachableIndexError)
    assert explained.exit_code == 3
    assert explained.render().endswith(
        "  the package index this step names could not be reached from this machine: "
        "download.pytorch.org (https://download.pytorch.org/whl/cpu)\n"
        "  point the step at a mirror with ERSILIA_PACK_INDEX_MAP="
        "'https://download.pytorch.org/whl/cpu=https://mirror.example/whl/cpu' "
        "(comma-separated FROM=TO pairs rewrite index URLs in install steps)"
    )
    # a failure that is not about reaching an index stays as it was
    other = InstallError("install.sh", "bash install.sh", 1, "error: Failed to build `x==1`")
    assert explain_unreachable(other, step) is other
    with pytest.raises(PlanError, match="is not FROM=TO"):
        parse_index_map("https://a.example=")
