"""OpenAPI pieces the routes share: the request body, the documented responses, and routes that
answer HEAD with no operation of their own."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, Union

from fastapi import FastAPI, Query
from pydantic import BaseModel, create_model

from ersilia_pack.runtime.http.io import Orient

OrientQuery = Annotated[Orient, Query(description="shape of the result, as pandas' to_json")]
FetchCacheQuery = Annotated[bool, Query(description="answer from the result cache when possible")]
SaveCacheQuery = Annotated[bool, Query(description="keep computed rows in the result cache")]
CacheOnlyQuery = Annotated[bool, Query(description="never run the model; uncached rows are null")]
WithMetaQuery = Annotated[bool, Query(description="wrap as {result, meta} with failure reasons")]

_ERROR = {"type": "object", "properties": {"detail": {}}, "required": ["detail"]}


class SplitResult(BaseModel):
    """The body of ``orient=split``: column names, row positions and rows of values."""

    columns: list[str]
    index: list[int]
    data: list[list[Any]]


class FailedRow(BaseModel):
    """An input the model could not handle, and why."""

    index: int
    input: str
    reason: str


class ResultMeta(BaseModel):
    """What ``with_meta=true`` adds beside the result."""

    failed: list[FailedRow]


def result_model(row: type[BaseModel]) -> Any:
    """The documented 200 body of ``POST /<api>``: each ``orient`` shape, bare or wrapped.

    records is a list of rows, index a mapping of positions to rows, columns a mapping of
    column names to positions and values, split a :class:`SplitResult`, values a list of
    lists; ``with_meta=true`` wraps any of them as ``{"result", "meta"}``.
    """
    shapes = Union[  # noqa: UP007 - built at run time from the model's row class
        list[row],  # type: ignore[valid-type]
        dict[str, row],  # type: ignore[valid-type]
        dict[str, dict[str, Any]],
        SplitResult,
        list[list[Any]],
    ]
    wrapped = create_model(f"{row.__name__}WithMeta", result=(shapes, ...), meta=(ResultMeta, ...))
    return Union[shapes, wrapped]  # noqa: UP007


def request_body(example: list[str]) -> dict[str, Any]:
    """The request body of ``POST /<api>``: JSON inputs, or a CSV upload."""
    strings = {"type": "array", "minItems": 1, "items": {"type": "string"}}
    objects = {
        "type": "array",
        "minItems": 1,
        "items": {
            "type": "object",
            "properties": {
                "key": {"description": "the caller's own name for the input; not used"},
                "input": {"type": "string"},
            },
            "required": ["input"],
        },
    }
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {
                    "schema": {"anyOf": [strings, objects]},
                    "example": example,
                },
                "text/csv": {
                    "schema": {"type": "string"},
                    "example": "\n".join(["input", *example]) + "\n",
                },
                "multipart/form-data": {
                    "schema": {
                        "type": "object",
                        "properties": {"file": {"type": "string", "format": "binary"}},
                        "required": ["file"],
                    }
                },
            },
        }
    }


def response_docs(example_output: list[dict[str, Any]]) -> dict[int | str, dict[str, Any]]:
    """Documented responses of ``POST /<api>``, with the model's example output."""
    error = {"content": {"application/json": {"schema": _ERROR}}}
    return {
        200: {"content": {"application/json": {"example": example_output}}},
        400: {"description": "the body is not valid JSON", **error},
        413: {"description": "the body or the number of inputs is over the limit", **error},
        415: {"description": "unsupported content type", **error},
        422: {"description": "the body is not a list of inputs", **error},
        502: {"description": "the model failed", **error},
        504: {"description": "the model ran out of time", **error},
    }


def get_and_head(app: FastAPI, path: str, endpoint: Callable[..., Any], **options: Any) -> None:
    """Answer GET and HEAD at ``path`` with ``endpoint``; document GET only.

    A route documented with both methods would give them one operation id, which breaks the
    OpenAPI document; so one hidden route serves both (and names both in a 405's ``Allow``),
    and, unless ``include_in_schema=False``, a second one only documents GET.
    """
    documented = options.pop("include_in_schema", True)
    app.add_api_route(path, endpoint, methods=["GET", "HEAD"], include_in_schema=False, **options)
    if documented:
        app.add_api_route(path, endpoint, methods=["GET"], **options)
