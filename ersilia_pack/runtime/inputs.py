"""Inputs as text: one codec for request bodies, the batch command's files and the model's
input file.

Every reader keeps an input exactly as it was sent (no stripping, a quoted empty field is an
input ``""``) and skips only blank lines. Every input must be one line: a model script may
read its input file with ``csv``, with pandas or line by line, and an input holding a line
break (or a character that ``str.splitlines`` breaks on, or NUL) would become two records for
some of them and shift every later row onto another input. Such inputs are refused, named,
rather than written.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from pathlib import Path
from typing import TextIO

# Columns that hold the inputs, in order of preference.
INPUT_HEADERS = ("input", "smiles", "text")
# Names a header row may have; a first row with none of them is taken for an input row.
KNOWN_HEADERS = frozenset(
    {
        *INPUT_HEADERS,
        "inputs",
        "key",
        "id",
        "name",
        "identifier",
        "molecule",
        "molecules",
        "mol",
        "compound",
        "compound_id",
        "smi",
        "inchi",
        "inchikey",
        "sequence",
        "protein",
        "query",
        "value",
    }
)
# Characters that end a line for csv, pandas, readlines() or str.splitlines(), and NUL.
LINE_BREAKING = {
    "\n": "a line feed (\\n)",
    "\r": "a carriage return (\\r)",
    "\x00": "a NUL character (\\x00)",
    "\x0b": "a vertical tab (\\x0b)",
    "\x0c": "a form feed (\\x0c)",
    "\x1c": "a file separator (\\x1c)",
    "\x1d": "a group separator (\\x1d)",
    "\x1e": "a record separator (\\x1e)",
    "\x85": "a next-line character (\\x85)",
    "\u2028": "a line separator (\\u2028)",
    "\u2029": "a paragraph separator (\\u2029)",
}
_BREAKS = frozenset(LINE_BREAKING)
_IDENTIFIERS = frozenset({"key", "id", "name", "identifier", "compound_id", "inchikey"})


class InputError(ValueError):
    """Inputs that cannot be read or passed on as they are; carries the HTTP status."""

    def __init__(self, message: str, status_code: int = 422) -> None:
        super().__init__(message)
        self.status_code = status_code


def line_problem(value: str) -> str | None:
    """Why an input cannot be one line of the model's input file, or None when it can."""
    if _BREAKS.isdisjoint(value):
        return None
    position, char = next((i, c) for i, c in enumerate(value) if c in _BREAKS)
    return f"holds {LINE_BREAKING[char]} at character {position}"


def check_lines(inputs: Iterable[str]) -> None:
    """InputError (422) naming the first input that cannot be one line."""
    for position, value in enumerate(inputs):
        problem = line_problem(value)
        if problem:
            raise InputError(
                f"input {position} {problem}: an input must be one line of text, "
                "without line breaks or control characters"
            )


def _header_known(name: str) -> bool:
    name = name.strip().lower()
    return name in KNOWN_HEADERS or "smiles" in name


def input_column(header: list[str]) -> int:
    """The column holding the inputs: input, smiles or text by name, else a column whose
    name says SMILES, else the first that is not an identifier (key, id, name ...)."""
    names = [name.strip().lower() for name in header]
    for wanted in INPUT_HEADERS:
        if wanted in names:
            return names.index(wanted)
    smiles = next((i for i, name in enumerate(names) if "smiles" in name), None)
    if smiles is not None:
        return smiles
    return next((i for i, name in enumerate(names) if name not in _IDENTIFIERS), 0)


def read_csv(text: str) -> list[str]:
    """The inputs of a CSV with a header row; InputError (400 unreadable, 422 otherwise)."""
    try:
        # newline="" lets the csv module see quoted line breaks and lone carriage returns.
        rows = [row for row in csv.reader(io.StringIO(text, newline="")) if row]
    except csv.Error as error:
        raise InputError(f"the CSV cannot be read: {error}", 400) from error
    if not rows:
        raise InputError("the CSV is empty: send a header row and one input per row")
    header = rows[0]
    if not any(_header_known(name) for name in header):
        first = ",".join(header)
        shown = first if len(first) <= 40 else first[:37] + "..."
        raise InputError(
            f"the CSV's first line {shown!r} looks like an input, not a header: add a header "
            "line (e.g. smiles or input) above the inputs"
        )
    column = input_column(header)
    inputs = [row[column] if column < len(row) else "" for row in rows[1:]]
    if not inputs:
        raise InputError("the CSV holds no inputs below its header row")
    check_lines(inputs)
    return inputs


def read_lines(text: str) -> list[str]:
    """One input per line (``\\n``, ``\\r\\n`` or ``\\r`` ends a line); blank lines are skipped."""
    inputs = [line for line in io.StringIO(text, newline=None).read().split("\n") if line]
    if not inputs:
        raise InputError("the text holds no inputs (one input per line)")
    check_lines(inputs)
    return inputs


def read_file(path: Path) -> list[str]:
    """The inputs of a file: a CSV with a header (``.csv``), else one input per line."""
    text = path.read_text(encoding="utf-8-sig")
    return read_csv(text) if path.suffix.lower() == ".csv" else read_lines(text)


def write_csv(handle: TextIO, inputs: Iterable[str], header: str = "input") -> None:
    """The model's input file: a header row, then one input per line.

    Fields are quoted only where CSV needs it (a comma or a quote), so a script that reads
    lines sees plain inputs; an input that cannot be one line raises InputError.
    """
    values = list(inputs)
    check_lines(values)
    writer = csv.writer(handle, lineterminator="\n")
    writer.writerow([header])
    writer.writerows([value] for value in values)
