"""What a pack writes: readable generated code that passes the linter, and the bundle's files."""

from __future__ import annotations

import json
import py_compile
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import DEMO_DIR, FIXTURES, ROOT, pack_fixture

from ersilia_pack.errors import RenderError
from ersilia_pack.pack import pack
from ersilia_pack.runtime.bundle import TAG_PATTERN

FIXTURE_NAMES = ["stdlib-simple", "load-once-py", "bad-input-fails"]


@pytest.fixture(scope="module")
def demo_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo model (two APIs, one load-once) packed once for this module."""
    root = tmp_path_factory.mktemp("demo-repository")
    return pack(DEMO_DIR, backend="system", repository_root=root).bundle_dir


def rendered_python(bundle: Path) -> list[Path]:
    files = sorted((bundle / "app").rglob("*.py"))
    assert files, f"{bundle}/app holds no Python files"
    return files


def ruff_check(folder: Path) -> subprocess.CompletedProcess[str]:
    """``ruff check`` with the project's own configuration, as CI lints the project."""
    config = str(ROOT / "pyproject.toml")
    return subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--config", config, "--no-cache", str(folder)],
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.mark.parametrize("name", FIXTURE_NAMES)
def test_rendered_code_compiles_and_passes_the_linter(
    packed: Callable[..., Path], name: str
) -> None:
    bundle = packed(name)
    files = rendered_python(bundle)
    assert {path.name for path in files} >= {"__init__.py", "main.py", "schemas.py", "api_run.py"}
    for path in files:
        py_compile.compile(str(path), doraise=True)

    lint = ruff_check(bundle / "app")

    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_the_demo_bundle_passes_the_linter_too(demo_bundle: Path) -> None:
    files = rendered_python(demo_bundle)
    assert {"api_run.py", "api_esol.py"} <= {path.name for path in files}
    for path in files:
        py_compile.compile(str(path), doraise=True)

    lint = ruff_check(demo_bundle / "app")

    assert lint.returncode == 0, lint.stdout + lint.stderr


def test_a_bundle_holds_what_the_ersilia_client_reads(packed: Callable[..., Path]) -> None:
    bundle = packed("stdlib-simple")

    assert TAG_PATTERN.match(bundle.name), bundle.name
    assert bundle.parent.name == "stdlib-simple"
    assert json.loads((bundle / "status.json").read_text()) == {"done": True}
    information = json.loads((bundle / "information.json").read_text())
    assert information["model_id"] == "stdlib-simple"
    assert information["Slug"] == "string-features"
    assert information["api_list"] == ["run"]
    assert information["card"]["Incorporation Date"] == "2024-05-01"
    schema = json.loads((bundle / "api_schema.json").read_text())
    assert schema["run"]["output"]["outcome"]["meta"] == ["length", "upper", "vowel_ratio"]
    install = (bundle / "installs" / "install.sh").read_text()
    assert install.startswith("#!/usr/bin/env bash\n")
    assert 'echo "stdlib-simple needs no packages"' in install
    # the model folder is copied as it is, checkpoints included
    assert (bundle / "model" / "framework" / "code" / "features.py").is_file()
    assert (bundle / "model" / "checkpoints").is_dir()
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert manifest["environment"]["backend"] == "system"
    assert manifest["environment"]["python"] == sys.executable
    assert manifest["model_id"] == "stdlib-simple"
    assert len(manifest["model_hash"]) == 64
    assert manifest["tag"] == bundle.name
    assert [api["name"] for api in manifest["apis"]] == ["run"]
    # nothing half-written is left beside the bundle
    assert not [path.name for path in bundle.parent.iterdir() if path.name.startswith(".partial")]


def test_a_repack_adds_a_newer_bundle_and_keeps_the_older(tmp_path: Path) -> None:
    first = pack_fixture("bad-input-fails", tmp_path)
    second = pack_fixture("bad-input-fails", tmp_path)

    assert first.parent == second.parent
    assert sorted(path.name for path in first.parent.iterdir()) == [first.name, second.name]
    assert second.name > first.name


def test_a_model_failing_its_example_check_leaves_nothing_behind(tmp_path: Path) -> None:
    with pytest.raises(RenderError) as caught:
        pack(FIXTURES / "crashing-script", backend="system", repository_root=tmp_path)

    assert caught.value.exit_code == 4
    message = caught.value.render()
    assert message.startswith("the packed model does not reproduce its examples:")
    assert "run: the example input failed: run exited with code 1" in message
    assert "Traceback" not in message
    # no bundle, no staging folder, not even the model's folder: it did not exist before
    assert list(tmp_path.iterdir()) == []
