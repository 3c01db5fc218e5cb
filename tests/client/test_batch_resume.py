"""``ersilia_pack run`` stopped and run again: it goes on where it stopped, computing nothing
twice (the counting fixture model writes a line per input it computes)."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from clientkit import wait_for
from helpers import console_script, run_command, served, wait_until_gone

pytestmark = pytest.mark.slow

INPUTS = [f"item-{i:05d}" for i in range(3000)]
INPUTS[1234] = "bad"  # the model gives it no values: an empty row, computed once all the same


def expected_rows() -> list[list[str]]:
    return [
        [text, "", ""] if text == "bad" else [text, str(len(text)), text.upper()] for text in INPUTS
    ]


@pytest.fixture
def input_file(tmp_path: Path) -> Path:
    path = tmp_path / "inputs.txt"
    path.write_text("".join(f"{text}\n" for text in INPUTS))
    return path


def start(*args: str | Path, env: Mapping[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``ersilia_pack run ...`` as a process of its own, its stderr into ``log``."""
    with log.open("wb") as handle:
        return subprocess.Popen(
            [console_script("ersilia_pack"), "run", *map(str, args)],
            stdin=subprocess.DEVNULL,
            stdout=handle,
            stderr=handle,
            env={**os.environ, **env},
        )


def state_of(output: Path) -> dict[str, Any] | None:
    try:
        state: dict[str, Any] = json.loads(
            output.with_name(output.name + ".state.json").read_text()
        )
    except (FileNotFoundError, ValueError):
        return None
    return state


def computed(counter: Path) -> Counter[str]:
    """How many times the model computed each of the test's inputs (its examples left out)."""
    wanted = set(INPUTS)
    return Counter(line for line in counter.read_text().splitlines() if line in wanted)


def read_table(path: Path) -> list[list[str]]:
    with path.open(newline="") as handle:
        return list(csv.reader(handle))


def test_interrupted_local_run_continues_and_computes_nothing_twice(
    counting_repository: Path, input_file: Path, tmp_path: Path
) -> None:
    output = tmp_path / "out.csv"
    counter = tmp_path / "computed.txt"
    env = {"CLIENT_TEST_COUNTER": str(counter), "CLIENT_TEST_DELAY": "0.3"}
    args = ("--repository_dir", counting_repository, "-i", input_file, "-o", output)
    args += ("--chunk-size", "100", "--workers", "2")

    first = start(*args, env=env, log=tmp_path / "first.log")
    try:
        wait_for(
            lambda: (state_of(output) or {}).get("rows_done", 0) >= 500,
            within=120,
            what="5 chunks recorded",
        )
        first.send_signal(signal.SIGINT)
        code = first.wait(timeout=120)
    finally:
        first.kill()
        first.wait()
    said = (tmp_path / "first.log").read_text()
    stopped = state_of(output)

    assert code == 130, said
    assert "interrupted with" in said and "run the same command again to continue" in said
    assert stopped is not None and 500 <= stopped["rows_done"] < len(INPUTS)
    assert not output.exists()
    assert set(computed(counter)) == set(INPUTS[: stopped["rows_done"]])

    second = run_command("ersilia_pack", "run", *args, env=env)

    assert second.returncode == 0, second.stderr
    assert f"{stopped['rows_done']:,} of them from an earlier run" in second.stdout
    assert "(1 without values" in second.stdout
    header, *rows = read_table(output)
    assert header == ["input", "length", "upper"]
    assert rows == expected_rows()
    times = computed(counter)
    assert set(times) == set(INPUTS)
    assert [text for text, count in times.items() if count != 1] == []
    assert sorted(tmp_path.glob("out.csv.*")) == []
    assert wait_until_gone(str(counting_repository)) == []


def test_a_killed_local_run_continues_from_its_last_recorded_chunk(
    counting_repository: Path, input_file: Path, tmp_path: Path
) -> None:
    output = tmp_path / "out.json"
    counter = tmp_path / "computed.txt"
    env = {"CLIENT_TEST_COUNTER": str(counter), "CLIENT_TEST_DELAY": "0.3"}
    args = ("--repository_dir", counting_repository, "-i", input_file, "-o", output)
    args += ("--chunk-size", "100", "--workers", "2")

    first = start(*args, env=env, log=tmp_path / "first.log")
    try:
        wait_for(
            lambda: (state_of(output) or {}).get("rows_done", 0) >= 300,
            within=120,
            what="3 chunks recorded",
        )
        first.kill()  # kill -9: nothing is finished or recorded on the way out
        first.wait(timeout=60)
    finally:
        first.kill()
        first.wait()
    stopped = state_of(output)
    assert stopped is not None and stopped["rows_done"] < len(INPUTS)
    wait_until_gone(str(counting_repository))

    second = run_command("ersilia_pack", "run", *args, env=env)

    assert second.returncode == 0, second.stderr
    records = json.loads(output.read_text())
    assert [list(record.values()) for record in records] == [
        [text, None, None] if text == "bad" else [text, len(text), text.upper()] for text in INPUTS
    ]
    times = computed(counter)
    recorded = INPUTS[: stopped["rows_done"]]
    # What was recorded before the kill is computed once; only the chunks in flight then
    # may have been computed twice.
    assert [text for text in recorded if times[text] != 1] == []
    assert set(times) == set(INPUTS)
    assert sum(times.values()) - len(INPUTS) <= 2 * 100


def test_interrupted_remote_run_follows_the_same_job_again(
    counting_repository: Path, input_file: Path, tmp_path: Path
) -> None:
    output = tmp_path / "out.json"
    counter = tmp_path / "computed.txt"
    server_env = {
        "CLIENT_TEST_COUNTER": str(counter),
        "CLIENT_TEST_DELAY": "0.3",
        "ERSILIA_PACK_JOB_CHUNK_SIZE": "100",
    }
    # No result cache: a second job would compute every input again, and the counter would
    # show it.
    with served(counting_repository, "--workers", "2", "--cache-size", "0", env=server_env) as url:
        args = ("--url", url, "-i", input_file, "-o", output)
        first = start(*args, env={}, log=tmp_path / "first.log")
        try:
            job_id = wait_for(
                lambda: (state_of(output) or {}).get("job_id"), within=60, what="the job id"
            )
            first.send_signal(signal.SIGTERM)
            code = first.wait(timeout=60)
        finally:
            first.kill()
            first.wait()
        said = (tmp_path / "first.log").read_text()
        assert code == 130, said
        assert f"job {job_id} goes on on the server" in said

        second = run_command("ersilia_pack", "run", *args)

    assert second.returncode == 0, second.stderr
    assert f"following job {job_id} from an earlier run" in second.stderr
    assert "submitted job" not in second.stderr
    records = json.loads(output.read_text())
    assert [record["input"] for record in records] == INPUTS
    assert records[1234] == {"input": "bad", "length": None, "upper": None}
    times = computed(counter)
    assert set(times) == set(INPUTS)
    assert [text for text, count in times.items() if count != 1] == []
