"""The real console scripts as processes: pack, serve on a free port, call over HTTP."""

from __future__ import annotations

import csv
import json
import socket
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from helpers import (
    DEMO_DIR,
    FIXTURES,
    processes_mentioning,
    run_command,
    served,
    wait_until_gone,
)

pytestmark = pytest.mark.slow


def post_json(url: str, payload: Any) -> tuple[int, Any]:
    """POST JSON with the standard library, as any client would; status and decoded body."""
    request = urllib.request.Request(
        url,
        data=json.dumps(payload).encode(),
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read())


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=60) as response:
        return json.loads(response.read())


def read_csv(path: Path) -> list[list[str]]:
    with path.open(newline="") as handle:
        return [row for row in csv.reader(handle) if row]


def example(model_dir: Path, api: str) -> tuple[list[str], list[dict[str, Any]]]:
    """An API's example input, and its example output typed by its columns file."""
    framework = model_dir / "model" / "framework"
    inputs = [row[0] for row in read_csv(framework / "examples" / f"{api}_input.csv")[1:]]
    header, *rows = read_csv(framework / "examples" / f"{api}_output.csv")
    types = {
        name: kind for name, kind, *_ in read_csv(framework / "columns" / f"{api}_columns.csv")
    }
    convert = {"float": float, "integer": int, "string": str}
    records = [
        {name: convert[types[name]](value) for name, value in zip(header, row, strict=True)}
        for row in rows
    ]
    return inputs, records


def assert_same_records(actual: list[dict[str, Any]], expected: list[dict[str, Any]]) -> None:
    assert len(actual) == len(expected)
    for got, want in zip(actual, expected, strict=True):
        assert list(got) == list(want)
        for name, value in want.items():
            if isinstance(value, float):
                assert got[name] == pytest.approx(value, rel=1e-9), name
            else:
                assert got[name] == value, name


def only_bundle(repository: Path) -> Path:
    [bundle] = [path for path in repository.iterdir() if not path.name.startswith(".")]
    return bundle


@pytest.mark.parametrize("backend", ["venv", "system"])
def test_pack_and_serve_a_standard_library_model(eos: Path, backend: str) -> None:
    model_dir = FIXTURES / "stdlib-simple"

    packed = run_command("ersilia_pack", "--model_dir", model_dir, f"--{backend}", "--eos", eos)

    assert packed.returncode == 0, packed.stderr
    repository = eos / "repository" / "stdlib-simple"
    bundle = only_bundle(repository)
    assert packed.stdout.strip() == f"packed stdlib-simple into {bundle}"
    assert "Traceback" not in packed.stderr
    environment = json.loads((bundle / "manifest.json").read_text())["environment"]
    assert environment["backend"] == backend
    if backend == "venv":
        # the install ran inside the new environment, which lives beside the bundles
        prefix = Path(environment["prefix"])
        assert prefix.parent == repository / ".envs"
        assert (prefix / "bin" / "python").is_file()
        assert f"install runs in {prefix}" in packed.stderr
        # made with uv by default, seeded with pip because install.sh may call it
        install = json.loads((bundle / "manifest.json").read_text())["install"]
        assert install["installer"] == "uv"
        assert "installing with uv" in packed.stderr
        assert (prefix / "bin" / "pip").is_file()

    inputs, expected = example(model_dir, "run")
    # ersilia_serve takes the model's repository folder (its newest bundle) or a bundle itself
    with served(repository if backend == "venv" else bundle) as url:
        status, rows = post_json(f"{url}/run", inputs)
        root = get_json(f"{url}/")

    assert status == 200
    assert_same_records(rows, expected)
    assert root == {"stdlib-simple": "string-features"}


def test_pack_and_serve_the_demo_model(eos: Path) -> None:
    packed = run_command("ersilia_pack", "--model_dir", DEMO_DIR, "--system", "--eos", eos)

    assert packed.returncode == 0, packed.stderr
    repository = eos / "repository" / "eos-demo"
    run_input, run_output = example(DEMO_DIR, "run")
    esol_input, esol_output = example(DEMO_DIR, "esol")
    bundle = only_bundle(repository)
    with served(repository, "--workers", "1") as url:
        run_status, run_rows = post_json(f"{url}/run", run_input)
        esol_status, esol_rows = post_json(f"{url}/esol", esol_input)
        invalid_status, invalid_rows = post_json(f"{url}/esol", ["not a smiles", esol_input[0]])
        info = get_json(f"{url}/info")
        model_processes = processes_mentioning(str(bundle))
    # the model's processes (its load-once worker among them) end with the server
    assert model_processes, "the esol API should have a load-once worker running"
    assert wait_until_gone(str(bundle)) == []

    assert (run_status, esol_status) == (200, 200)
    assert_same_records(run_rows, run_output)
    assert_same_records(esol_rows, esol_output)
    # the load-once model returns None for a SMILES it cannot read: a null row, not a failure
    assert invalid_status == 200
    assert invalid_rows[0] == {"logs": None, "solubility_class": None}
    assert_same_records(invalid_rows[1:], esol_output[:1])
    assert info["api_list"] == ["esol", "run"]


def test_an_invalid_model_directory_exits_1_listing_every_problem(eos: Path) -> None:
    result = run_command(
        "ersilia_pack", "--model_dir", FIXTURES / "bad-metadata", "--system", "--eos", eos
    )

    assert result.returncode == 1
    assert "Traceback" not in result.stderr + result.stdout
    assert "4 problems in" in result.stderr
    for expected in (
        "metadata.yml: 'Identifier' is \"../escape\", not a safe name",
        "metadata.yml: 'Slug' is \"has space\", not a safe name",
        "model/framework/columns/run_columns.csv: line 2: type 'decimal' of column 'score'",
        "model/framework/examples/run_output.csv: has 1 rows but the example input has 2",
    ):
        assert expected in result.stderr
    assert not (eos / "repository").exists() or not any((eos / "repository").iterdir())


def test_lint_lists_the_same_problems(tmp_path: Path) -> None:
    result = run_command("ersilia_model_lint", "--repo_path", FIXTURES / "bad-metadata")

    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "4 problems in" in result.stderr
    assert "type 'decimal' of column 'score'" in result.stderr


def tree(folder: Path) -> dict[str, bytes]:
    return {
        str(path.relative_to(folder)): path.read_bytes()
        for path in sorted(folder.rglob("*"))
        if path.is_file() and "__pycache__" not in path.parts
    }


def test_a_failing_install_exits_3_and_leaves_the_earlier_bundle_alone(
    tmp_path: Path, eos: Path
) -> None:
    model_dir = tmp_path / "failing-install"
    (model_dir).mkdir()
    for source in (FIXTURES / "failing-install").rglob("*"):
        target = model_dir / source.relative_to(FIXTURES / "failing-install")
        if source.is_dir():
            target.mkdir(exist_ok=True)
        else:
            target.write_bytes(source.read_bytes())
    failing_install = (model_dir / "install.sh").read_text()
    # first a pack that works, so there is an earlier bundle to keep
    (model_dir / "install.sh").write_text("echo 'weights fetched'\n")
    first = run_command("ersilia_pack", "--model_dir", model_dir, "--system", "--eos", eos)
    assert first.returncode == 0, first.stderr
    repository = eos / "repository" / "failing-install"
    earlier = only_bundle(repository)
    before = tree(earlier)

    (model_dir / "install.sh").write_text(failing_install)
    result = run_command("ersilia_pack", "--model_dir", model_dir, "--system", "--eos", eos)

    assert result.returncode == 3
    assert "Traceback" not in result.stderr
    error = result.stderr[result.stderr.index("error: ") :]
    assert error.splitlines()[:2] == [
        "error: install step 'install.sh' failed: exited with 7",
        "  command: bash install.sh",
    ]
    assert "    fetching the model weights" in error
    assert "    weights server unreachable" in error
    assert "never reached" not in result.stderr
    assert sorted(path.name for path in repository.iterdir()) == [earlier.name]
    assert tree(earlier) == before


def test_serving_a_folder_with_no_bundle_fails_clearly(tmp_path: Path) -> None:
    empty = tmp_path / "repository" / "eos0none"
    empty.mkdir(parents=True)

    result = run_command("ersilia_serve", "--repository_dir", empty, "--port", "0", timeout=60)
    missing = run_command(
        "ersilia_serve", "--repository_dir", tmp_path / "nowhere", "--port", "0", timeout=60
    )

    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    assert f"{empty} holds no finished bundle: pack the model first" in result.stderr
    assert "Uvicorn running" not in result.stderr
    assert missing.returncode != 0
    assert f"{tmp_path / 'nowhere'} does not exist or is not a folder" in missing.stderr


def test_serving_on_a_taken_port_exits_4(packed: Callable[..., Path]) -> None:
    bundle = packed("stdlib-simple")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]

        result = run_command(
            "ersilia_serve", "--repository_dir", bundle, "--port", str(port), timeout=60
        )

    assert result.returncode == 4
    assert (
        f"error: stdlib-simple could not be served: port {port} on 127.0.0.1 is taken by "
        "another program; choose another with --port, or --port 0 for a free one"
    ) in result.stderr
    assert "Traceback" not in result.stderr


def test_bad_arguments_exit_1_with_a_usage_message(tmp_path: Path) -> None:
    no_model = run_command("ersilia_pack", "--system", "--eos", tmp_path, timeout=60)
    bad_port = run_command(
        "ersilia_serve", "--repository_dir", tmp_path, "--port", "70000", timeout=60
    )

    assert no_model.returncode == 1
    assert "Missing option '--model_dir'" in no_model.stderr
    assert bad_port.returncode == 1
    assert "Invalid value for '--port'" in bad_port.stderr
    assert "Traceback" not in no_model.stderr + bad_port.stderr
