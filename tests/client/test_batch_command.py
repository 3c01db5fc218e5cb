"""``ersilia_pack run``: what a person sees for bad arguments, failures, and at a terminal."""

from __future__ import annotations

import os
import pty
import re
import subprocess
from pathlib import Path

import pytest
from clientkit import free_port
from helpers import console_script, run_command, served

pytestmark = pytest.mark.slow


@pytest.fixture
def inputs(tmp_path: Path) -> Path:
    path = tmp_path / "inputs.csv"
    path.write_text("text\nabc\nhello\n")
    return path


def test_one_place_for_the_model_is_required(inputs: Path, tmp_path: Path) -> None:
    neither = run_command("ersilia_pack", "run", "-i", inputs, "-o", tmp_path / "o.csv")
    both = run_command(
        "ersilia_pack", "run", "--url", "http://127.0.0.1:1", "--repository_dir", tmp_path,
        "-i", inputs, "-o", tmp_path / "o.csv",
    )  # fmt: skip

    for done in (neither, both):
        assert done.returncode == 1
        assert "give one of --url and --repository_dir" in done.stderr


@pytest.mark.parametrize(
    ("name", "text", "output", "message"),
    [
        ("missing.csv", None, "o.csv", "does not exist"),
        ("empty.csv", "smiles\n", "o.csv", "holds no inputs below its header row"),
        ("blank.txt", "\n\n", "o.csv", "holds no inputs (one input per line)"),
        ("fine.txt", "abc\n", "o.xlsx", "must end in .csv or .json"),
        ("fine.txt", "abc\n", "no-such-folder/o.csv", "does not exist"),
    ],
)
def test_an_unusable_input_or_output_is_a_usage_error(
    counting_repository: Path,
    tmp_path: Path,
    name: str,
    text: str | None,
    output: str,
    message: str,
) -> None:
    source = tmp_path / name
    if text is not None:
        source.write_text(text)

    done = run_command(
        "ersilia_pack", "run", "--repository_dir", counting_repository, "-i", source,
        "-o", tmp_path / output,
    )  # fmt: skip

    assert done.returncode == 1, done.stderr
    assert message in done.stderr
    assert "Traceback" not in done.stderr


def test_an_unknown_api_or_repository_is_a_usage_error(
    counting_repository: Path, inputs: Path, tmp_path: Path
) -> None:
    api = run_command(
        "ersilia_pack", "run", "--repository_dir", counting_repository, "-i", inputs,
        "-o", tmp_path / "o.csv", "--api", "nope",
    )  # fmt: skip
    where = run_command(
        "ersilia_pack", "run", "--repository_dir", tmp_path / "nowhere", "-i", inputs,
        "-o", tmp_path / "o.csv",
    )  # fmt: skip

    assert api.returncode == 1
    assert "api 'nope' is not an API of counting-client: use one of run" in api.stderr
    assert where.returncode == 1
    assert "does not exist" in where.stderr


def test_a_broken_model_is_exit_4_with_its_reason(
    counting_repository: Path, inputs: Path, tmp_path: Path
) -> None:
    done = run_command(
        "ersilia_pack", "run", "--repository_dir", counting_repository, "-i", inputs,
        "-o", tmp_path / "o.csv",
        env={"CLIENT_TEST_BROKEN": "1", "ERSILIA_PACK_COLD": "1"},
    )  # fmt: skip

    assert done.returncode == 4
    # The chunk is tried again first, so the last failure may be the start-up self-check's
    # (503, "does not reproduce its example") rather than the run's own (502).
    assert re.search(r"error: run of counting-client failed \(50[23]\)", done.stderr)
    assert "the model is broken" in done.stderr
    assert not (tmp_path / "o.csv").exists()


def test_an_unreachable_server_is_exit_4_and_a_wrong_key_exit_1(
    counting_repository: Path, inputs: Path, tmp_path: Path
) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    gone = run_command("ersilia_pack", "run", "--url", url, "-i", inputs, "-o", tmp_path / "o.csv")
    with served(counting_repository, "--api-key", "sesame") as served_url:
        args = ("run", "--url", served_url, "-i", inputs, "-o", tmp_path / "o.json")
        wrong = run_command("ersilia_pack", *args, "--api-key", "wrong")
        right = run_command("ersilia_pack", *args, env={"ERSILIA_PACK_API_KEY": "sesame"})

    assert gone.returncode == 4
    assert f"GET {url}/info failed after 5 tries" in gone.stderr
    assert wrong.returncode == 1
    assert "401" in wrong.stderr and "API key" in wrong.stderr
    assert right.returncode == 0, right.stderr
    assert (tmp_path / "o.json").read_text().startswith('[\n{"input": "abc", "length": 3')


def test_a_terminal_gets_a_progress_bar(counting_repository: Path, tmp_path: Path) -> None:
    source = tmp_path / "inputs.txt"
    source.write_text("".join(f"item-{i}\n" for i in range(400)))
    controller, terminal = pty.openpty()
    try:
        process = subprocess.Popen(
            [
                console_script("ersilia_pack"), "run", "--repository_dir",
                str(counting_repository), "-i", str(source), "-o", str(tmp_path / "o.csv"),
                "--chunk-size", "50",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=terminal,
            env={**os.environ, "CLIENT_TEST_DELAY": "0.1"},
        )  # fmt: skip
        os.close(terminal)
        seen = b""
        while True:
            try:
                data = os.read(controller, 4096)
            except OSError:  # the terminal closed: the command is done
                break
            if not data:
                break
            seen += data
        code = process.wait(timeout=120)
    finally:
        os.close(controller)
    shown = seen.decode(errors="replace")

    assert code == 0, shown
    assert "\rcomputing [" in shown
    assert "] 400/400 rows (100%)" in shown
    assert "rows/s" in shown and "left" in shown
    assert "computing:" not in shown  # the bar, not the plain lines
