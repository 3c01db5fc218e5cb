"""The client reads a job's streamed JSON rows as they arrive, however the text is cut."""

from __future__ import annotations

import json

import pytest

from ersilia_pack.client import _records

ROWS = [
    {"input": "C[C@H](N)C(=O)O", "name": "a, b] {c}", "value": 1.5e-07},
    {"input": 'é \u2603 \\ "quoted"', "name": None, "value": None},
    {"input": "", "name": "[]", "value": -3},
]


@pytest.mark.parametrize("size", [1, 2, 3, 7, 64, 10_000])
def test_rows_come_out_whole_wherever_the_text_is_cut(size: int) -> None:
    text = json.dumps(ROWS, separators=(",", ":"))
    pieces = [text[i : i + size] for i in range(0, len(text), size)]

    assert list(_records(pieces)) == ROWS


def test_an_empty_array_and_whitespace() -> None:
    assert list(_records(["  [ ", " ]\n"])) == []
    assert (
        list(_records(["[\n", json.dumps(ROWS[0]), " ,\n ", json.dumps(ROWS[1]), "]"])) == ROWS[:2]
    )


def test_a_stream_cut_short_or_not_of_rows_is_an_error() -> None:
    text = json.dumps(ROWS)
    with pytest.raises(ValueError, match="ended before the end"):
        list(_records([text[:-5]]))
    with pytest.raises(ValueError, match="not a JSON array"):
        list(_records(['{"a": 1}']))
    with pytest.raises(ValueError, match="not a JSON object"):
        list(_records(["[1, 2]"]))
