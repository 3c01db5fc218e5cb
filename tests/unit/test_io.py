"""Reading request bodies into inputs, and shaping typed rows like pandas' to_json."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import httpx
import pandas
import pytest

from ersilia_pack.runtime.bundle.columns import Column, type_rows
from ersilia_pack.runtime.http.io import InputError, dumps, parse_inputs, shape
from ersilia_pack.runtime.inputs import read_csv, write_csv


def body(payload: Any) -> bytes:
    return json.dumps(payload).encode()


def multipart(files: dict[str, tuple[str, bytes, str]], data: dict[str, str] | None = None):
    """The content type and body a client sends for a form upload."""
    request = httpx.Request("POST", "http://test/run", files=files, data=data)
    return request.headers["content-type"], request.read()


def test_json_list_of_strings() -> None:
    assert parse_inputs("application/json", body(["CCO", "c1ccccc1"])) == ["CCO", "c1ccccc1"]


def test_json_with_charset_and_no_content_type() -> None:
    assert parse_inputs("application/json; charset=utf-8", body(["CCO"])) == ["CCO"]
    assert parse_inputs("", body(["CCO"])) == ["CCO"]


def test_curl_default_form_content_type_with_a_json_body() -> None:
    assert parse_inputs("application/x-www-form-urlencoded", b'["CCO"]') == ["CCO"]


def test_json_objects_with_key_and_input_ignore_extra_fields() -> None:
    payload = [
        {"key": "1", "input": "CCO", "text": "ignored", "extra": {"x": 1}},
        {"input": "c1ccccc1"},
    ]
    assert parse_inputs("application/json", body(payload)) == ["CCO", "c1ccccc1"]


def test_duplicates_and_order_are_kept() -> None:
    assert parse_inputs("application/json", body(["b", "a", "b"])) == ["b", "a", "b"]


def test_csv_text_with_a_header() -> None:
    assert parse_inputs("text/csv", b"smiles\nCCO\nc1ccccc1\n") == ["CCO", "c1ccccc1"]
    # the input column is found by name, else the first column is taken
    assert parse_inputs("text/csv", b"key,input\nk1,CCO\nk2,CCN\n") == ["CCO", "CCN"]
    assert parse_inputs("text/csv", b"molecule,key\nCCO,k1\n") == ["CCO"]


def test_csv_with_a_byte_order_mark_and_windows_lines() -> None:
    assert parse_inputs("text/csv", "\ufeffinput\r\nCCO\r\n".encode()) == ["CCO"]


def test_multipart_upload() -> None:
    content_type, raw = multipart(
        {"file": ("inputs.csv", b"input\nCCO\nc1ccccc1\n", "text/csv")}, {"note": "x"}
    )
    assert parse_inputs(content_type, raw) == ["CCO", "c1ccccc1"]


@pytest.mark.parametrize(
    ("payload", "words"),
    [
        ({"inputs": ["CCO"]}, "must be a JSON list of inputs, got dict"),
        ("CCO", "must be a JSON list of inputs, got str"),
        ([], "empty list"),
        (["CCO", 3], "item 1 is 3"),
        (["CCO", None], "item 1 is null"),
        ([["CCO"]], 'item 0 is ["CCO"]'),
        ([{"key": "1"}], 'item 0 is {"key": "1"}'),
        ([{"input": 5}], "an 'input' string"),
    ],
)
def test_bodies_that_are_not_lists_of_strings_are_422(payload: Any, words: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_inputs("application/json", body(payload))
    assert caught.value.status_code == 422
    assert words in str(caught.value)


def test_an_empty_body_is_422_with_a_message() -> None:
    for content_type in ("application/json", ""):
        with pytest.raises(InputError) as caught:
            parse_inputs(content_type, b"")
        assert caught.value.status_code == 422
        assert "empty" in str(caught.value)


def test_invalid_json_is_400() -> None:
    with pytest.raises(InputError) as caught:
        parse_inputs("application/json", b'["CCO",')
    assert caught.value.status_code == 400
    assert "not valid JSON" in str(caught.value)


def test_unsupported_content_type_is_415() -> None:
    with pytest.raises(InputError) as caught:
        parse_inputs("application/xml", b"<inputs/>")
    assert caught.value.status_code == 415
    assert "'application/xml' is not supported" in str(caught.value)


@pytest.mark.parametrize(
    ("content_type", "raw", "status", "words"),
    [
        ("text/csv", b"", 422, "empty"),
        ("text/csv", b"input\n", 422, "no inputs"),
        ("multipart/form-data; boundary=x", b"garbage", 400, "could not be read"),
    ],
)
def test_bad_uploads(content_type: str, raw: bytes, status: int, words: str) -> None:
    with pytest.raises(InputError) as caught:
        parse_inputs(content_type, raw)
    assert caught.value.status_code == status
    assert words in str(caught.value)


def form(*fields: tuple[str, str]) -> tuple[str, bytes]:
    """A multipart body of plain fields (no filename), as ``curl -F 'name=<file'`` sends."""
    raw = b"".join(
        b"--b0undary\r\n"
        + f'Content-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'.encode()
        for name, value in fields
    )
    return "multipart/form-data; boundary=b0undary", raw + b"--b0undary--\r\n"


def test_a_csv_sent_as_a_plain_field_named_file() -> None:
    content_type, raw = form(("note", "not the inputs"), ("file", "input\nCCO\nCCN\n"))
    assert parse_inputs(content_type, raw) == ["CCO", "CCN"]


def test_a_csv_sent_as_the_only_field() -> None:
    content_type, raw = form(("inputs", "smiles\nCCO\n"))
    assert parse_inputs(content_type, raw) == ["CCO"]


def test_multipart_without_a_file_is_422() -> None:
    content_type, raw = form(("note", "no file here"), ("other", "nor here"))
    with pytest.raises(InputError) as caught:
        parse_inputs(content_type, raw)
    assert caught.value.status_code == 422
    assert "no file" in str(caught.value)


ROWS: list[list[Any] | None] = [[1, "a"], None, [1, "a"]]
NAMES = ["n", "s"]


def test_records() -> None:
    assert shape(ROWS, NAMES, "records") == [
        {"n": 1, "s": "a"},
        {"n": None, "s": None},
        {"n": 1, "s": "a"},
    ]


def test_split() -> None:
    assert shape(ROWS, NAMES, "split") == {
        "columns": ["n", "s"],
        "index": [0, 1, 2],
        "data": [[1, "a"], [None, None], [1, "a"]],
    }


def test_columns() -> None:
    assert shape(ROWS, NAMES, "columns") == {
        "n": {"0": 1, "1": None, "2": 1},
        "s": {"0": "a", "1": None, "2": "a"},
    }


def test_index() -> None:
    assert shape(ROWS, NAMES, "index") == {
        "0": {"n": 1, "s": "a"},
        "1": {"n": None, "s": None},
        "2": {"n": 1, "s": "a"},
    }


def test_values() -> None:
    assert shape(ROWS, NAMES, "values") == [[1, "a"], [None, None], [1, "a"]]


def test_unknown_orient() -> None:
    with pytest.raises(InputError, match="orient 'table' is not one of records, split"):
        shape(ROWS, NAMES, "table")


def test_type_rows_and_dumps_never_write_nan() -> None:
    columns = [Column(name="x", type="float"), Column(name="y", type="integer")]
    typed = type_rows([["nan", "2"], None, ["1.5", ""]], columns)
    assert typed == [[None, 2], None, [1.5, None]]
    assert dumps(shape(typed, ["x", "y"], "values")) == b"[[null,2],[null,null],[1.5,null]]"
    with pytest.raises(ValueError):
        dumps([float("nan")])


# One codec: what a body, a batch file and the model's input file hold


@pytest.mark.parametrize(
    ("value", "named"),
    [
        ("\r", "carriage return"),
        ("a\rb", "carriage return"),
        ("a\nb", "line feed"),
        ("a\x00b", "NUL"),
        ("a\u2028b", "line separator"),
        ("a\x0bb", "vertical tab"),
    ],
)
def test_an_input_that_cannot_be_one_line_is_422_naming_the_character(
    value: str, named: str
) -> None:
    with pytest.raises(InputError) as caught:
        parse_inputs("application/json", body(["CCO", value]))
    assert caught.value.status_code == 422
    assert "input 1" in str(caught.value)
    assert named in str(caught.value)
    # a quoted line break in a CSV upload is refused the same way
    with pytest.raises(InputError, match=named):
        parse_inputs("text/csv", b'input\nCCO\n"' + value.encode() + b'"\n')


def test_the_model_input_file_gives_every_reader_one_record_per_input(tmp_path: Path) -> None:
    inputs = ["CCO", "", " spaced ", "a,b", 'say "hi"', "tab\there", "é ü"]
    path = tmp_path / "input.csv"
    with path.open("w", newline="", encoding="utf-8") as handle:
        write_csv(handle, inputs)

    with path.open(newline="", encoding="utf-8") as handle:
        assert [row[0] for row in list(csv.reader(handle))[1:]] == inputs
    frame = pandas.read_csv(path, keep_default_na=False)
    assert frame["input"].tolist() == inputs
    with path.open(encoding="utf-8") as handle:
        assert len(handle.readlines()) == len(inputs) + 1
    assert read_csv(path.read_text(encoding="utf-8")) == inputs


def test_the_model_input_file_refuses_an_input_of_two_lines(tmp_path: Path) -> None:
    with (
        (tmp_path / "input.csv").open("w", newline="") as handle,
        pytest.raises(InputError, match="input 1 holds a carriage return"),
    ):
        write_csv(handle, ["CCO", "a\rb"])


def test_text_plain_is_one_input_per_line() -> None:
    raw = b"CCO\r\nc1ccccc1\n\n  spaced  \nlast"
    assert parse_inputs("text/plain", raw) == ["CCO", "c1ccccc1", "  spaced  ", "last"]
    with pytest.raises(InputError, match="no inputs"):
        parse_inputs("text/plain; charset=utf-8", b"\n\n")


@pytest.mark.parametrize("raw", [b"CCO\nc1ccccc1\n", b"CCO,1\nCCN,2\n"])
def test_a_csv_without_a_header_is_422_asking_for_one(raw: bytes) -> None:
    with pytest.raises(InputError) as caught:
        parse_inputs("text/csv", raw)
    assert caught.value.status_code == 422
    assert "'CCO" in str(caught.value)
    assert "add a header" in str(caught.value)


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"id,smiles\nm1,CCO\nm2,CCN\n", ["CCO", "CCN"]),
        (b"ID,Canonical_SMILES\nm1,CCO\n", ["CCO"]),
        (b"key,molecule\nk1,CCO\n", ["CCO"]),
        # a quoted empty input is an input; spaces are kept; blank lines are not inputs
        (b'smiles\n""\n\n CCO \n', ["", " CCO "]),
    ],
)
def test_csv_column_choice_and_kept_values(raw: bytes, expected: list[str]) -> None:
    assert parse_inputs("text/csv", raw) == expected
