"""One failure policy for every batch: ``ersilia_pack run`` through a bundle here
(``--repository_dir``) and through a job on a real ``ersilia_serve`` (``--url``) gives the same
rows, the same null rows with the same reasons, and the same exit code.

A chunk the model fails on is tried again (three times, after 0.5, 1 and 2 s); one that keeps
failing while the model answers its example input gets null rows with the reason; a model that
no longer answers stops the run with exit 4.
"""

from __future__ import annotations

import csv
import shutil
import sqlite3
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import pack_fixture, run_command, served

from ersilia_pack.runtime.bundle.manifest import load_bundle
from ersilia_pack.runtime.state.sqlite_store import SqliteStore

pytestmark = pytest.mark.slow

TIMEOUT = {"ERSILIA_PACK_TIMEOUT": "1"}
# One slot, run cold: every try of a chunk is one run of it (and, when it fails, one run of
# the example input), so a test can count the runs that fail.
ONE_COLD_SLOT = {"ERSILIA_PACK_WORKERS": "1", "ERSILIA_PACK_COLD": "1"}


@dataclass
class Outcome:
    """What one way of running the batch gave: exit code, what it said, the rows it wrote, and
    the reason of each null row (by input) where the job ran."""

    code: int
    said: str
    rows: list[list[str]]
    reasons: dict[str, str]


def read_table(path: Path) -> list[list[str]]:
    with path.open(newline="") as handle:
        return list(csv.reader(handle))


def server_reasons(bundle_dir: Path) -> dict[str, str]:
    """The reasons kept beside the null rows of the jobs a server ran (its job store)."""
    bundle = load_bundle(bundle_dir)
    path = bundle.state_dir / "state.db"
    with sqlite3.connect(path) as db:
        job_ids = [row[0] for row in db.execute("SELECT id FROM jobs")]
    store = SqliteStore(path)
    try:
        reasons: dict[str, str] = {}
        for job_id in job_ids:
            job = store.get_job(job_id)
            assert job is not None
            for chunk in range(job.chunks):
                inputs, result = store.chunk_inputs(job_id, chunk), store.read_chunk(job_id, chunk)
                if inputs is not None and result is not None:  # a failed job has none
                    reasons.update((inputs[i], reason) for i, reason in result.errors.items())
        return reasons
    finally:
        store.close()


def logged_reasons(said: str, inputs: list[str], rows: list[list[str]]) -> dict[str, str]:
    """The reason the run logged for the chunk of each input whose row is empty."""
    nulls = [row[0] for row in rows[1:] if row[1:] == ["", ""]]
    lines = [line for line in said.splitlines() if "its rows are null: " in line]
    reason = {line.rpartition("its rows are null: ")[2] for line in lines}
    assert len(reason) <= 1, lines
    return dict.fromkeys(nulls, reason.pop()) if reason else {}


def here(
    repository: Path, inputs: list[str], tmp_path: Path, env: Mapping[str, str], chunk: int
) -> Outcome:
    """``ersilia_pack run --repository_dir``: the bundle run in this process."""
    source, output = tmp_path / "here-in.txt", tmp_path / "here-out.csv"
    source.write_text("".join(f"{text}\n" for text in inputs))
    done = run_command(
        "ersilia_pack", "run", "--repository_dir", repository, "-i", source, "-o", output,
        "--chunk-size", str(chunk),
        env={"ERSILIA_PACK_SELF_CHECK": "0", **ONE_COLD_SLOT, **env},
    )  # fmt: skip
    rows = read_table(output) if output.exists() else []
    said = done.stdout + done.stderr
    return Outcome(done.returncode, said, rows, logged_reasons(said, inputs, rows))


def on_a_server(
    repository: Path, inputs: list[str], tmp_path: Path, env: Mapping[str, str], chunk: int
) -> Outcome:
    """``ersilia_pack run --url``: a job on the bundle served by ``ersilia_serve``."""
    copy = tmp_path / "served" / repository.name
    shutil.copytree(repository, copy, ignore=shutil.ignore_patterns("state"))
    source, output = tmp_path / "served-in.txt", tmp_path / "served-out.csv"
    source.write_text("".join(f"{text}\n" for text in inputs))
    server_env = {"ERSILIA_PACK_JOB_CHUNK_SIZE": str(chunk), **ONE_COLD_SLOT, **env}
    # No start-up self-check: it would run the example once more, as a failing run.
    with served(copy, "--no-self-check", env=server_env) as url:
        done = run_command("ersilia_pack", "run", "--url", url, "-i", source, "-o", output)
    rows = read_table(output) if output.exists() else []
    bundle_dir = next(path for path in copy.iterdir() if (path / "app").is_dir())
    return Outcome(done.returncode, done.stdout + done.stderr, rows, server_reasons(bundle_dir))


@pytest.fixture(scope="module")
def fails_for_a_while(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/fixtures/fails-for-a-while packed (its pack-time runs told nothing to fail)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.delenv("FAILS_FOR_A_WHILE", raising=False)
        return pack_fixture("fails-for-a-while", tmp_path_factory.mktemp("flaky")).parent


@pytest.fixture(scope="module")
def hangs_on_some_inputs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """tests/fixtures/hangs-on-some-inputs packed (its example never hangs)."""
    return pack_fixture("hangs-on-some-inputs", tmp_path_factory.mktemp("hangs")).parent


def both_ways(
    repository: Path,
    inputs: list[str],
    tmp_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    chunk: int = 1000,
    before: object = None,
) -> tuple[Outcome, Outcome]:
    """The batch here, then through a server; ``before`` (a callable) runs before each."""
    outcomes = []
    for way in (here, on_a_server):
        if callable(before):
            before()
        outcomes.append(way(repository, inputs, tmp_path, env or {}, chunk))
    return outcomes[0], outcomes[1]


def test_a_chunk_the_model_fails_on_twice_is_tried_again_and_every_row_gets_its_values(
    fails_for_a_while: Path, tmp_path: Path
) -> None:
    failures = tmp_path / "failures"
    inputs = ["CCO", "hello", "zz", "x"]
    # Two tries of the chunk fail: each is its run and the run of the example input that
    # tells a model failing now from inputs it cannot read. The third try answers.
    local, remote = both_ways(
        fails_for_a_while,
        inputs,
        tmp_path,
        env={"FAILS_FOR_A_WHILE": str(failures)},
        before=lambda: failures.write_text("4"),
    )

    for outcome in (local, remote):
        assert outcome.code == 0, outcome.said
        assert "wrote 4 rows" in outcome.said and "(0 without values)" in outcome.said
        assert outcome.reasons == {}
    assert failures.read_text() == "0"
    assert (
        local.rows
        == remote.rows
        == [
            ["input", "length", "upper"],
            ["CCO", "3", "CCO"],
            ["hello", "5", "HELLO"],
            ["zz", "2", "ZZ"],
            ["x", "1", "X"],
        ]
    )
    assert "trying again in 0.5 s" in local.said and "trying again in 1 s" in local.said


def test_a_chunk_that_keeps_failing_gets_null_rows_with_the_reason_and_the_run_goes_on(
    hangs_on_some_inputs: Path, tmp_path: Path
) -> None:
    inputs = ["CCO", "hello", "hang-1", "hang-2", "zz", "x"]
    local, remote = both_ways(hangs_on_some_inputs, inputs, tmp_path, env=TIMEOUT, chunk=2)

    for outcome in (local, remote):
        assert outcome.code == 0, outcome.said
        assert "wrote 6 rows" in outcome.said and "(2 without values)" in outcome.said
    assert (
        local.rows
        == remote.rows
        == [
            ["input", "length", "upper"],
            ["CCO", "3", "CCO"],
            ["hello", "5", "HELLO"],
            ["hang-1", "", ""],
            ["hang-2", "", ""],
            ["zz", "2", "ZZ"],
            ["x", "1", "X"],
        ]
    )
    expected = dict.fromkeys(["hang-1", "hang-2"], "run did not finish within 1 s")
    assert local.reasons == remote.reasons == expected
    assert "chunk 1 failed 4 times while the model answers its example input" in local.said


def test_a_model_that_no_longer_answers_stops_the_run_with_exit_4_both_ways(
    fails_for_a_while: Path, tmp_path: Path
) -> None:
    failures = tmp_path / "failures"
    local, remote = both_ways(
        fails_for_a_while,
        ["CCO", "hello"],
        tmp_path,
        env={"FAILS_FOR_A_WHILE": str(failures)},
        before=lambda: failures.write_text("1000"),
    )

    for outcome in (local, remote):
        assert outcome.code == 4, outcome.said
        assert "out of memory, for now" in outcome.said
        assert outcome.rows == []
    assert "error: run of fails-for-a-while failed (502)" in local.said
    assert "failed: " in remote.said
