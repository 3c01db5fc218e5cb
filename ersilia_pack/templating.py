"""The package's one Jinja environment, over the templates shipped as
``ersilia_pack.templates`` (the top-level ``templates/`` folder), and the filters they use.

``StrictUndefined``, so a missing name fails the render instead of writing an empty string; no
autoescaping, as the templates write Python, shell, YAML, pip.conf and Dockerfiles, never HTML;
``trim_blocks``, ``lstrip_blocks`` and ``keep_trailing_newline``, so a tag leaves no line of its
own and a file ends as its template does.
"""

from __future__ import annotations

import functools
import json
import textwrap
from collections.abc import Mapping
from importlib import resources
from typing import Any

import jinja2

from ersilia_pack.errors import ErsiliaPackError

TEMPLATES = "ersilia_pack.templates"


def clean_text(value: str) -> str:
    """Text that encodes as UTF-8: surrogate pairs (as some YAML escapes give) joined into the
    character they stand for, lone surrogates replaced by U+FFFD."""
    return value.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def _escape(char: str) -> str:
    code = ord(char)
    if code < 0x80:
        return char
    if code < 0x100:
        return f"\\x{code:02x}"
    return f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}"


def _python_string(value: str) -> str:
    """A double-quoted Python literal in ASCII: other characters as Python escapes.

    Not json.dumps alone: it escapes a character outside the Basic Multilingual Plane as a
    surrogate pair, which Python reads as two lone surrogates that no response can encode.
    """
    text = json.dumps(clean_text(value), ensure_ascii=False)
    return "".join(map(_escape, text))


def _short_pieces(piece: str, width: int) -> list[str]:
    """``piece`` cut so that each part's literal stays within ``width`` characters."""
    parts, current = [], ""
    for char in piece:
        if current and len(_python_string(current + char)) > width:
            parts.append(current)
            current = ""
        current += char
    return [*parts, current]


def pyliteral(value: str, indent: int = 8) -> str:
    """A string literal that keeps rendered lines short (implicit concatenation when long)."""
    if len(_python_string(value)) <= 62:
        return _python_string(value)
    pieces = [
        part
        for piece in textwrap.wrap(value, 60, drop_whitespace=False, break_on_hyphens=False)
        for part in _short_pieces(piece, 78)
    ]
    pad = " " * indent
    body = "\n".join(f"{pad}    {_python_string(piece)}" for piece in pieces)
    return f"(\n{body}\n{pad})"


def read(name: str) -> str:
    """``templates/<name>`` as it is: a template's source, or a file no Jinja runs over
    (``container/Dockerfile.base``)."""
    return resources.files(TEMPLATES).joinpath(name).read_text(encoding="utf-8")


@functools.cache
def environment() -> jinja2.Environment:
    """The environment every template renders in (made once; it keeps the compiled templates)."""
    env = jinja2.Environment(
        loader=jinja2.FunctionLoader(read),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        autoescape=False,
    )
    env.filters["pyliteral"] = pyliteral
    env.filters["json"] = json.dumps
    return env


def render(name: str, values: Mapping[str, Any], *, error: type[ErsiliaPackError]) -> str:
    """``templates/<name>`` rendered with ``values``; a template that fails to render (a
    missing name included) raises ``error``, naming the template."""
    try:
        return environment().get_template(name).render(**values)
    except jinja2.TemplateError as failure:
        raise error(f"template {name} failed to render: {failure}") from failure
