"""What a new user meets first, on the real console scripts: help, warnings, plain errors."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from helpers import FIXTURES, copy_fixture, run_command, served


def _without_httpx2(tmp_path: Path) -> dict[str, str]:
    """An environment where ``import httpx2`` fails, as for every user (httpx2 is only in the
    dev extra), and every warning is shown."""
    hidden = tmp_path / "hide-httpx2"
    (hidden / "httpx2").mkdir(parents=True)
    (hidden / "httpx2" / "__init__.py").write_text(
        "raise ModuleNotFoundError(\"No module named 'httpx2'\", name='httpx2')\n"
    )
    return {"PYTHONPATH": str(hidden), "PYTHONWARNINGS": "default"}


def test_help_and_a_pack_print_no_warning_without_httpx2(tmp_path: Path) -> None:
    env = _without_httpx2(tmp_path)
    shown = run_command("ersilia_pack", "--help", env=env, timeout=60)
    packed = run_command(
        "ersilia_pack", "--model_dir", FIXTURES / "stdlib-simple", "--system",
        "--eos", tmp_path / "eos", env=env,
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert "Warning" not in shown.stderr
    assert packed.returncode == 0, packed.stderr
    assert "packed stdlib-simple into" in packed.stdout
    assert "Warning" not in packed.stderr, packed.stderr


@pytest.mark.parametrize("command", ["ersilia_pack", "ersilia_serve"])
def test_help_loads_no_server_packing_images_or_manifests(command: str) -> None:
    result = run_command(command, "--help", env={"PYTHONPROFILEIMPORTTIME": "1"}, timeout=60)
    loaded = {
        line.rsplit("|", 1)[-1].strip()
        for line in result.stderr.splitlines()
        if line.startswith("import time:")
    }
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ersilia_pack.cli" in loaded
    machinery = {
        "fastapi", "uvicorn", "httpx", "ersilia_pack.pack", "ersilia_pack.check",
        "ersilia_pack.serve", "ersilia_pack.containerize", "ersilia_pack.kube",
    }  # fmt: skip
    assert not machinery & loaded


def test_a_script_with_a_syntax_error_is_found_before_the_install(tmp_path: Path) -> None:
    model = copy_fixture("stdlib-simple", tmp_path / "model")
    (model / "model" / "framework" / "run.sh").write_text("python $1/code/features.py $2 $3\n(\n")
    result = run_command(
        "ersilia_pack", "--model_dir", model, "--system", "--eos", tmp_path / "eos", timeout=120
    )
    assert result.returncode == 1, result.stderr
    assert (
        "model/framework/run.sh: is not valid bash: line 3: syntax error: unexpected end of file"
        in result.stderr
    )
    assert "needs no packages" not in result.stdout + result.stderr  # install.sh never ran
    assert not (tmp_path / "eos" / "repository" / "stdlib-simple").exists()


@pytest.mark.parametrize("where", ["missing", "empty"])
def test_serving_a_folder_without_a_bundle_is_a_usage_error(tmp_path: Path, where: str) -> None:
    folder = tmp_path / where
    if where == "empty":
        folder.mkdir()
    result = run_command("ersilia_serve", "--repository_dir", folder, "--port", "0", timeout=60)
    assert result.returncode == 1, result.stderr
    expected = "does not exist or is not a folder" if where == "missing" else "holds no finished"
    assert f"error: {folder} {expected}" in result.stderr
    assert "$EOS/repository/MODEL_ID" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_taken_port_is_named_with_a_way_out(packed: Callable[..., Path]) -> None:
    bundle = packed("stdlib-simple")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        holder.listen()
        port = holder.getsockname()[1]
        result = run_command("ersilia_serve", "--repository_dir", bundle, "--port", port)
    assert result.returncode == 4, result.stderr
    assert f"port {port} on 127.0.0.1 is taken by another program" in result.stderr
    assert "--port 0 for a free one" in result.stderr
    assert "see uvicorn's error above" not in result.stderr


def test_a_multipart_csv_upload_with_and_without_inputs(packed: Callable[..., Path]) -> None:
    bundle = packed("stdlib-simple")
    with served(bundle) as url:
        upload = httpx.post(
            f"{url}/run", files={"file": ("in.csv", b"input\nabc\nde\n", "text/csv")}
        )
        header_only = httpx.post(f"{url}/run", files={"file": ("in.csv", b"input\n", "text/csv")})
        # a browser's form sent before a file was chosen
        boundary = "b0undary"
        nothing = httpx.post(
            f"{url}/run",
            headers={"content-type": f"multipart/form-data; boundary={boundary}"},
            content=(
                f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename=""\r\n'
                f"Content-Type: application/octet-stream\r\n\r\n\r\n--{boundary}--\r\n"
            ).encode(),
        )
    assert upload.status_code == 200, upload.text
    assert [row["upper"] for row in upload.json()] == ["ABC", "DE"]
    assert header_only.status_code == 422
    assert header_only.json()["detail"] == (
        "the uploaded file 'in.csv': the CSV holds no inputs below its header row"
    )
    assert nothing.status_code == 422
    assert nothing.json()["detail"].startswith("no file was chosen for the form field 'file'")


def test_an_unknown_route_lists_the_models_apis(packed: Callable[..., Path]) -> None:
    bundle = packed("stdlib-simple")
    with served(bundle) as url:
        unknown = httpx.get(f"{url}/nope")
        posted = httpx.post(f"{url}/predict", json=["abc"])
        missing_field = httpx.get(f"{url}/card/NoSuchField")
    assert unknown.status_code == 404
    assert unknown.json() == {
        "detail": "no route GET /nope; this model's APIs: POST /run; see /docs"
    }
    assert posted.status_code == 404
    assert posted.json()["detail"].startswith("no route POST /predict; this model's APIs")
    # a route's own 404 keeps its own detail
    assert missing_field.status_code == 404
    assert "NoSuchField" in missing_field.json()["detail"]


def test_the_help_names_every_command() -> None:
    shown = run_command("ersilia_pack", "--help", timeout=60)
    assert shown.returncode == 0
    text = " ".join(shown.stdout.split())
    assert "ersilia_serve --repository_dir $EOS/repository/MODEL_ID" in text
    for command in ("ersilia_pack run", "ersilia_pack containerize", "ersilia_model_serve"):
        assert command in text


def test_the_batch_progress_says_computing_with_the_rows_done(
    packed: Callable[..., Path], tmp_path: Path
) -> None:
    bundle = packed("stdlib-simple")
    inputs = tmp_path / "in.csv"
    inputs.write_text("input\nabc\nde\nfgh\n")
    with served(bundle) as url:
        result = run_command(
            "ersilia_pack", "run", "--url", url, "-i", inputs, "-o", tmp_path / "out.csv"
        )
    assert result.returncode == 0, result.stderr
    assert "computing: 3/3 rows (100%)" in result.stderr
    assert "waiting for the job:" not in result.stderr


def test_an_empty_row_gives_the_models_own_line_as_its_reason(
    packed: Callable[..., Path],
) -> None:
    bundle = packed("says-why-empty")
    # one request, one run: each empty row gets the line that names it, not the run's last
    inputs = ["CCO", "a!b", "c!d", "?x", "N"]
    with served(bundle, "--workers", "1") as url:
        answer = httpx.post(f"{url}/run", params={"with_meta": "true"}, json=inputs)
    assert answer.status_code == 200, answer.text
    reasons = {item["index"]: item["reason"] for item in answer.json()["meta"]["failed"]}
    assert reasons == {
        1: "the model gave no values for this input: [12:00:00] SMILES Parse Error: "
        "could not parse 'a!b' in main.py",
        2: "the model gave no values for this input: [12:00:00] SMILES Parse Error: "
        "could not parse 'c!d' in main.py",
        3: "the model gave no values for this input: WARNING: an input was not a molecule",
    }
