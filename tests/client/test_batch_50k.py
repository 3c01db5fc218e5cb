"""``ersilia_pack run`` on the shared 50k data set, through both paths: every weight right.

Each path runs once per module (they are the slow part): locally with ``--repository_dir``
into CSV, and through a job on a served model with ``--url`` into JSON.
"""

from __future__ import annotations

import csv
import json
import math
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from clientkit import fresh_copy
from helpers import DATA, run_command, served
from rdkit import Chem, RDLogger

pytestmark = pytest.mark.slow

# Inputs RDKit cannot read, put among the data set's: their rows must be empty cells.
INVALID = {0: "not a molecule", 20_000: "C1CC(", -1: "xyz"}


def _data() -> tuple[list[str], list[float | None]]:
    with DATA.open(newline="") as handle:
        reader = csv.reader(handle)
        assert next(reader) == ["input", "mol_weight"]  # the shared data set's header
        rows = [(row[0], float(row[1])) for row in reader]
    inputs: list[str] = [smiles for smiles, _ in rows]
    weights: list[float | None] = [weight for _, weight in rows]
    for position, text in INVALID.items():
        where = len(inputs) if position == -1 else position
        inputs.insert(where, text)
        weights.insert(where, None)
    return inputs, weights


@pytest.fixture(scope="module")
def library(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], list[float | None]]:
    """The data set as an input CSV (with the invalid inputs among its rows)."""
    inputs, weights = _data()
    path = tmp_path_factory.mktemp("library") / "library.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["smiles"])
        writer.writerows([value] for value in inputs)
    return path, inputs, weights


@pytest.fixture(scope="module")
def unreadable(library: tuple[Path, list[str], list[float | None]]) -> int:
    """How many inputs RDKit itself cannot read (the inserted ones, and any in the data)."""
    RDLogger.DisableLog("rdApp.*")
    return sum(Chem.MolFromSmiles(value) is None for value in library[1])


def check_rows(
    rows: list[tuple[str, str | float | None]], inputs: list[str], weights: list[float | None]
) -> int:
    """Every row in input order with its right weight, or empty for an unreadable input; how
    many are empty."""
    assert [value for value, _ in rows] == inputs
    empty, wrong = 0, []
    for i, ((value, found), expected) in enumerate(zip(rows, weights)):
        if found in ("", None):
            empty += 1
            RDLogger.DisableLog("rdApp.*")
            if Chem.MolFromSmiles(value) is not None:
                wrong.append(i)
        elif expected is None or not math.isclose(float(found), expected, rel_tol=1e-4):
            wrong.append(i)
    assert wrong == [], f"{len(wrong)} wrong rows, e.g. row {wrong[0]}: {rows[wrong[0]]}"
    return empty


def leftovers(output: Path) -> list[Path]:
    return sorted(output.parent.glob(output.name + ".*"))


@pytest.fixture(scope="module")
def local_run(
    demo_bundle: Path,
    library: tuple[Path, list[str], list[float | None]],
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[subprocess.CompletedProcess[str], Path, Path]:
    root = tmp_path_factory.mktemp("local-50k")
    repository = fresh_copy(demo_bundle, root)
    output = root / "weights.csv"
    done = run_command(
        "ersilia_pack", "run", "--repository_dir", repository, "-i", library[0], "-o", output,
        "--workers", "2",
        timeout=1500,
    )  # fmt: skip
    return done, output, repository


@pytest.fixture(scope="module")
def remote_run(
    demo_bundle: Path,
    library: tuple[Path, list[str], list[float | None]],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[subprocess.CompletedProcess[str], Path, str]]:
    root = tmp_path_factory.mktemp("remote-50k")
    repository = fresh_copy(demo_bundle, root)
    output = root / "weights.json"
    with served(repository, "--workers", "3") as url:
        done = run_command(
            "ersilia_pack", "run", "--url", url, "-i", library[0], "-o", output, timeout=1500
        )
        yield done, output, url


def test_local_run_writes_every_weight_right_into_csv(
    local_run: tuple[subprocess.CompletedProcess[str], Path, Path],
    library: tuple[Path, list[str], list[float | None]],
    unreadable: int,
) -> None:
    done, output, _ = local_run
    _, inputs, weights = library
    assert done.returncode == 0, done.stderr
    with output.open(newline="") as handle:
        header, *table = list(csv.reader(handle))

    assert header[:2] == ["input", "mol_weight"]
    assert all(len(row) == len(header) for row in table)
    empty = check_rows([(row[0], row[1]) for row in table], inputs, weights)
    assert empty == unreadable >= len(INVALID)
    assert all(cell == "" for row in table if row[1] == "" for cell in row[1:])
    assert f"wrote {len(inputs):,} rows to {output} ({empty:,} without values)" in done.stdout
    assert "computing:" in done.stderr and "\r" not in done.stderr  # plain lines: no terminal
    assert leftovers(output) == []


def test_remote_run_writes_every_weight_right_into_json(
    remote_run: tuple[subprocess.CompletedProcess[str], Path, str],
    library: tuple[Path, list[str], list[float | None]],
    unreadable: int,
) -> None:
    done, output, _ = remote_run
    _, inputs, weights = library
    assert done.returncode == 0, done.stderr
    records = json.loads(output.read_text())

    assert isinstance(records, list)
    assert list(records[0])[:2] == ["input", "mol_weight"]
    empty = check_rows([(row["input"], row["mol_weight"]) for row in records], inputs, weights)
    assert empty == unreadable
    assert all(value is None for row in records if row["mol_weight"] is None for value in
               list(row.values())[1:])  # fmt: skip
    assert f"wrote {len(inputs):,} rows to {output} ({empty:,} without values)" in done.stdout
    assert "submitted job" in done.stderr
    assert leftovers(output) == []
