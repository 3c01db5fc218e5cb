"""Request bodies in, typed response shapes out."""

from __future__ import annotations

import json
from email.parser import BytesParser
from email.policy import HTTP
from typing import Any, Literal

from ersilia_pack.runtime.inputs import InputError, check_lines, read_csv, read_lines

Orient = Literal["records", "split", "columns", "index", "values"]
ORIENTS: tuple[str, ...] = ("records", "split", "columns", "index", "values")


def _describe(value: Any) -> str:
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def inputs_from_json(payload: Any) -> list[str]:
    """Read a JSON body: a list of strings or of objects with an ``input`` string."""
    if not isinstance(payload, list):
        raise InputError(
            f"the body must be a JSON list of inputs, got {type(payload).__name__}: "
            'send e.g. ["CCO", "c1ccccc1"] or [{"key": "1", "input": "CCO"}]'
        )
    if not payload:
        raise InputError("the body is an empty list: send at least one input")
    inputs: list[str] = []
    for position, item in enumerate(payload):
        if isinstance(item, str):
            inputs.append(_text(position, item))
        elif isinstance(item, dict) and isinstance(item.get("input"), str):
            inputs.append(_text(position, item["input"]))
        else:
            raise InputError(
                f"item {position} is {_describe(item)}: each input must be a string "
                "or an object with an 'input' string"
            )
    check_lines(inputs)
    return inputs


def _text(position: int, value: str) -> str:
    """An input that is real Unicode text: JSON escapes can spell lone surrogates."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as error:
        raise InputError(
            f"item {position} is not valid Unicode text: a lone surrogate at character "
            f"{error.start}"
        ) from error
    return value


def inputs_from_csv(text: str) -> list[str]:
    """Read a CSV upload with a header; the input column is input, smiles or text by name."""
    return read_csv(text)


def _csv_from_multipart(content_type: str, body: bytes) -> tuple[str, str]:
    """The CSV of a multipart upload, and where it came from (for messages about it)."""
    head = f"Content-Type: {content_type}\r\n\r\n".encode("latin-1")
    message = BytesParser(policy=HTTP).parsebytes(head + body)
    if not message.is_multipart():
        raise InputError("the multipart body could not be read", 400)
    fields: list[tuple[str | None, str | None, bytes]] = []
    for part in message.iter_parts():
        payload = part.get_payload(decode=True)
        if isinstance(payload, bytes):
            name = part.get_param("name", header="content-disposition")
            fields.append((part.get_filename(), name if isinstance(name, str) else None, payload))
    # A file upload first; else the CSV sent as a plain field named "file" (curl -F 'file=<x')
    # or as the form's only field.
    chosen = next((field for field in fields if field[0]), None)
    if chosen is None:
        chosen = next((field for field in fields if field[1] == "file"), None)
    if chosen is None and len(fields) == 1:
        chosen = fields[0]
    if chosen is None:
        raise InputError("the multipart body has no file: upload the CSV as a file field")
    filename, name, data = chosen
    if not filename and not data:  # a browser's form sent with no file chosen
        raise InputError(
            f"no file was chosen for the form field {name or 'file'!r}: upload a CSV with a "
            "header row and one input per row"
        )
    source = f"the uploaded file {filename!r}" if filename else f"the form field {name!r}"
    return data.decode("utf-8-sig", errors="replace"), source


def parse_inputs(content_type: str, body: bytes) -> list[str]:
    """Read the inputs of a request from its content type and raw body."""
    media = content_type.split(";", 1)[0].strip().lower()
    if media == "application/x-www-form-urlencoded" and body.lstrip()[:1] in (b"[", b"{"):
        media = "application/json"  # curl -d without a content type: the body is JSON
    if media in ("", "application/json") or media.endswith("+json"):
        if not body.strip():
            # A missing body is a body of the wrong shape (as FastAPI answers), not bad JSON.
            raise InputError('the body is empty: send a JSON list of inputs, e.g. ["CCO"]')
        try:
            payload = json.loads(body)
        except (ValueError, UnicodeDecodeError) as error:
            raise InputError(f"the body is not valid JSON: {error}", 400) from error
        except RecursionError as error:
            raise InputError("the body is nested too deeply: send a flat JSON list", 400) from error
        return inputs_from_json(payload)
    if media in ("text/csv", "application/csv"):
        return inputs_from_csv(body.decode("utf-8-sig", errors="replace"))
    if media == "text/plain":
        return read_lines(body.decode("utf-8-sig", errors="replace"))
    if media == "multipart/form-data":
        text, source = _csv_from_multipart(content_type, body)
        try:
            return inputs_from_csv(text)
        except InputError as error:  # say which part of the form it is about
            raise InputError(f"{source}: {error}", error.status_code) from error
    raise InputError(
        f"content type {media!r} is not supported: send application/json, text/csv, "
        "text/plain (one input per line) or a multipart/form-data CSV upload",
        415,
    )


def shape(rows: list[list[Any] | None], names: list[str], orient: str) -> Any:
    """Shape typed rows like pandas' ``DataFrame.to_json(orient=...)``, indexed by position.

    A ``None`` row becomes a row of nulls so every input keeps its place.
    """
    empty = [None] * len(names)
    full = [row if row is not None else empty for row in rows]
    if orient == "records":
        return [dict(zip(names, row)) for row in full]
    if orient == "split":
        return {"columns": names, "index": list(range(len(full))), "data": full}
    if orient == "index":
        return {str(i): dict(zip(names, row)) for i, row in enumerate(full)}
    if orient == "columns":
        return {
            name: {str(i): row[j] for i, row in enumerate(full)} for j, name in enumerate(names)
        }
    if orient == "values":
        return full
    raise InputError(f"orient {orient!r} is not one of {', '.join(ORIENTS)}")


def dumps(payload: Any) -> bytes:
    """Compact JSON; typed rows never hold NaN, and this refuses one if it slips through."""
    return json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
