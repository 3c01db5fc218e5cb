"""What a pack writes: readable generated code that passes the linter, and the bundle's files."""

from __future__ import annotations

import json
import py_compile
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from helpers import DEMO_DIR, FIXTURES, ROOT, app_client, pack_fixture, write_tree

from ersilia_pack.errors import RenderError
from ersilia_pack.pack import pack
from ersilia_pack.runtime.bundle.manifest import TAG_PATTERN

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


AWKWARD_COLUMNS = ["mol weight", "class", "1st", "model_config", "a-b", "a_b", "Äö", "json"]
ECHO_LENGTH = """\
import csv
import sys

with open(sys.argv[1], newline="") as handle:
    inputs = [row[0] for row in list(csv.reader(handle))[1:]]
with open(sys.argv[2], "w", newline="") as handle:
    writer = csv.writer(handle)
    writer.writerow(COLUMNS)
    writer.writerows([len(text) + i for i in range(len(COLUMNS))] for text in inputs)
"""


def test_awkward_column_and_api_names_render_and_answer(tmp_path: Path) -> None:
    header = ",".join(f'"{name}"' for name in AWKWARD_COLUMNS)
    files = {
        "metadata.yml": "Identifier: awkward-names\nSlug: awkward\nTitle: 'A \"quoted\" {title}'\n",
        "model/framework/code/main.py": ECHO_LENGTH.replace("COLUMNS", repr(AWKWARD_COLUMNS)),
    }
    # two APIs whose names differ only in punctuation
    for api in ("my-api", "my_api"):
        files[f"model/framework/{api}.sh"] = "python $1/code/main.py $2 $3\n"
        files[f"model/framework/columns/{api}_columns.csv"] = (
            "name,type,direction,description\n"
            + ("".join(f'"{name}",integer,,"the ""{name}"" column"\n' for name in AWKWARD_COLUMNS))
        )
        files[f"model/framework/examples/{api}_input.csv"] = "input\nab\n"
        files[f"model/framework/examples/{api}_output.csv"] = (
            header + "\n" + ",".join(str(2 + i) for i in range(len(AWKWARD_COLUMNS))) + "\n"
        )
    model_dir = write_tree(tmp_path / "model", files)

    bundle = pack(model_dir, backend="system", repository_root=tmp_path / "repository").bundle_dir

    lint = ruff_check(bundle / "app")
    assert lint.returncode == 0, lint.stdout + lint.stderr
    expected = {name: 3 + i for i, name in enumerate(AWKWARD_COLUMNS)}
    with app_client(bundle) as client:
        for api in ("my-api", "my_api"):
            response = client.post(f"/{api}", json=["abc"])
            assert response.status_code == 200, (api, response.text)
            assert response.json() == [expected]
        document = client.get("/openapi.json").json()
    properties = document["components"]["schemas"]["MyApiRow"]["properties"]
    assert list(properties) == AWKWARD_COLUMNS
    assert properties["class"]["description"] == 'the "class" column'
