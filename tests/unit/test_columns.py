"""Typing of output values per column, and the type inferred from example values."""

from __future__ import annotations

import json
import math
from typing import Any

import pytest

from ersilia_pack.runtime.bundle.columns import convert_value, infer_type, json_type


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("1.5", 1.5),
        ("548.7570000000002", 548.7570000000002),
        ("-4.8951230347826105", -4.8951230347826105),
        ("3", 3.0),
        ("1e-3", 0.001),
        (2, 2.0),
        (0.1, 0.1),
        ("", None),
        ("nan", None),
        ("NaN", None),
        (math.nan, None),
        ("inf", None),
        (math.inf, None),
        ("not a number", None),
        (None, None),
    ],
)
def test_float(raw: Any, expected: float | None) -> None:
    value = convert_value(raw, "float")
    assert value == expected
    assert value is None or isinstance(value, float)


def test_float_keeps_every_digit_through_json() -> None:
    raw = "0.27272727272727271"
    assert json.dumps(convert_value(raw, "float")) == repr(float(raw))
    assert convert_value("323.082539748", "float") == 323.082539748


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("3", 3),
        ("-12", -12),
        ("3.0", 3),
        ("1e3", 1000),
        (7, 7),
        (7.0, 7),
        (True, 1),
        ("12345678901234567890", 12345678901234567890),
        ("3.5", None),
        ("", None),
        ("nan", None),
        ("seven", None),
    ],
)
def test_integer(raw: Any, expected: int | None) -> None:
    value = convert_value(raw, "integer")
    assert value == expected
    assert value is None or type(value) is int


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("CCO", "CCO"),
        ("0012", "0012"),
        (5, "5"),
        (1.5, "1.5"),
        # a string column keeps what the model wrote: "" and the words pandas reads as NA
        ("", ""),
        ("NA", "NA"),
        ("NULL", "NULL"),
        ("N/A", "N/A"),
        ("NAN", "NAN"),
        ("nan", "nan"),
        # only no value at all is null
        (None, None),
        (math.nan, None),
    ],
)
def test_string(raw: Any, expected: str | None) -> None:
    value = convert_value(raw, "string")
    assert value == expected
    assert type(value) is type(expected)


@pytest.mark.parametrize("raw", ["", "nan", "NA", "NULL", math.inf])
def test_numeric_columns_read_missing_values_as_null(raw: Any) -> None:
    assert convert_value(raw, "float") is None
    assert convert_value(raw, "integer") is None


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ([1.0, math.nan], [1.0, None]),
        ([[math.inf, 2], {"x": -math.inf}], [[None, 2], {"x": None}]),
        ({"a": [math.nan], "b": "NA"}, {"a": [None], "b": "NA"}),
        ((1, math.nan), [1, None]),
    ],
)
def test_nested_values_are_cleaned_like_top_level_ones(raw: Any, expected: Any) -> None:
    value = convert_value(raw, "other")
    assert value == expected
    json.dumps(value, allow_nan=False)  # fit for a reply and for a job's stored rows


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ("7", 7),
        ("7.5", 7.5),
        ("abc", "abc"),
        ([1, 2], [1, 2]),
        ({"a": 1}, {"a": 1}),
        ("", None),
        ("nan", None),
        (math.nan, None),
    ],
)
def test_other_is_typed_as_it_looks(raw: Any, expected: Any) -> None:
    value = convert_value(raw, "other")
    assert value == expected
    assert type(value) is type(expected)


def test_numpy_like_scalars_are_unwrapped() -> None:
    class Scalar:
        def __init__(self, value: float) -> None:
            self.value = value

        def item(self) -> float:
            return self.value

    assert convert_value(Scalar(2.5), "float") == 2.5
    assert convert_value(Scalar(4.0), "integer") == 4


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["1", "2", "-3"], "integer"),
        (["1", "2.5"], "float"),
        (["1.0", "2.0"], "float"),
        (["1", "", "nan"], "integer"),
        (["a", "1"], "string"),
        (["", "nan"], "other"),
        ([], "other"),
    ],
)
def test_infer_type(values: list[str], expected: str) -> None:
    assert infer_type(values) == expected


def test_json_types_are_nullable() -> None:
    assert json_type("float") == {"anyOf": [{"type": "number"}, {"type": "null"}]}
    assert json_type("integer") == {"anyOf": [{"type": "integer"}, {"type": "null"}]}
    assert json_type("string") == {"anyOf": [{"type": "string"}, {"type": "null"}]}
    assert json_type("other") == {}
