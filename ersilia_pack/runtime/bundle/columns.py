"""Typed output columns and the conversion of raw model values to JSON values."""

from __future__ import annotations

import math
from typing import Any, Literal

from pydantic import BaseModel

ColumnType = Literal["float", "integer", "string", "other"]
COLUMN_TYPES: tuple[str, ...] = ("float", "integer", "string", "other")
_NULL_STRINGS = frozenset({"", "nan", "NaN", "NAN", "none", "None", "null", "NULL", "NA", "N/A"})


class Column(BaseModel):
    """One output column of an API."""

    name: str
    type: ColumnType = "other"
    direction: str = ""
    description: str = ""


def _as_float(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if math.isfinite(number) else None


def _as_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        try:
            return int(value)
        except ValueError:
            pass
    number = _as_float(value)
    if number is None or not number.is_integer():
        return None
    return int(number)


def _looks_like(value: Any) -> Any:
    """Type a value the way it looks: integer, then float, else the string itself."""
    if not isinstance(value, str):
        return convert_value(value, "float") if isinstance(value, float) else value
    integer = _as_int(value) if value.strip().lstrip("+-").isdigit() else None
    if integer is not None:
        return integer
    number = _as_float(value)
    return number if number is not None else value


def is_null(value: Any) -> bool:
    """True for the values a model writes to mean 'no value'."""
    if value is None:
        return True
    if isinstance(value, float):
        return not math.isfinite(value)
    return isinstance(value, str) and value.strip() in _NULL_STRINGS


def convert_value(value: Any, column_type: str) -> Any:
    """Convert one raw value (a CSV string or a Python object) to its column's JSON type.

    A string column keeps every string as it is (``""``, ``NA``, ``NULL`` included); only no
    value or a non-finite number is ``None`` there. In other columns empty, ``nan`` and the like
    are ``None``, and a value that cannot be read as its column's type becomes ``None`` too, so
    a response never breaks its own schema. Lists and dicts (``other``) are cleaned inside:
    non-finite numbers become ``None``, numpy scalars plain values.
    """
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        value = value.item()  # numpy scalars
    if column_type == "string":
        if isinstance(value, str):
            return value
        return None if is_null(value) else str(value)
    if is_null(value):
        return None
    if column_type == "float":
        return _as_float(value)
    if column_type == "integer":
        return _as_int(value)
    return _clean(_looks_like(value))


def _clean(value: Any) -> Any:
    """A nested value fit for JSON: non-finite numbers are None at any depth."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, (list, tuple)):
        return [_clean(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _clean(item) for key, item in value.items()}
    if hasattr(value, "item") and not isinstance(value, (str, bytes)):
        return _clean(value.item())
    return value


def infer_type(values: list[str]) -> ColumnType:
    """The narrowest column type that fits every non-empty example value."""
    present = [value for value in values if not is_null(value)]
    if not present:
        return "other"
    if all(_as_int(value) is not None and "." not in value for value in present):
        return "integer"
    if all(_as_float(value) is not None for value in present):
        return "float"
    return "string"


def json_type(column_type: str) -> dict[str, Any]:
    """The JSON schema of one column's values (always nullable)."""
    mapping = {"float": "number", "integer": "integer", "string": "string"}
    if column_type in mapping:
        return {"anyOf": [{"type": mapping[column_type]}, {"type": "null"}]}
    return {}


def type_rows(rows: list[list[Any] | None], columns: list[Column]) -> list[list[Any] | None]:
    """Convert raw rows (in column order) to typed values; ``None`` rows stay ``None``."""
    types = [column.type for column in columns]
    typed: list[list[Any] | None] = []
    for row in rows:
        if row is None:
            typed.append(None)
        else:
            typed.append([convert_value(value, kind) for value, kind in zip(row, types)])
    return typed
