"""OpenAPI pieces the generated routes share: the request body and the documented responses."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query

from ersilia_pack.runtime.io import Orient

OrientQuery = Annotated[Orient, Query(description="shape of the result, as pandas' to_json")]
FetchCacheQuery = Annotated[bool, Query(description="answer from the result cache when possible")]
SaveCacheQuery = Annotated[bool, Query(description="keep computed rows in the result cache")]
CacheOnlyQuery = Annotated[bool, Query(description="never run the model; uncached rows are null")]
WithMetaQuery = Annotated[bool, Query(description="wrap as {result, meta} with failure reasons")]

_ERROR = {"type": "object", "properties": {"detail": {}}, "required": ["detail"]}


def request_body(example: list[str]) -> dict[str, Any]:
    """The request body of ``POST /<api>``: JSON inputs, or a CSV upload."""
    strings = {"type": "array", "minItems": 1, "items": {"type": "string"}}
    objects = {
        "type": "array",
        "minItems": 1,
        "items": {
            "type": "object",
            "properties": {"key": {"type": "string"}, "input": {"type": "string"}},
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
