"""Reading a model's metadata card from metadata.json or metadata.yml, every key kept."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path
from typing import Any

import yaml

from ersilia_pack.errors import Problem

SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
KNOWN_KEYS = (
    "Identifier",
    "Slug",
    "Status",
    "Title",
    "Description",
    "Mode",
    "Source",
    "Source Type",
    "Task",
    "Subtask",
    "Input",
    "Input Shape",
    "Input Dimension",
    "Output",
    "Output Type",
    "Output Shape",
    "Output Dimension",
    "Output Consistency",
    "Interpretation",
    "Tag",
    "Biomedical Area",
    "Target Organism",
    "Publication Type",
    "Publication Year",
    "Publication",
    "Source Code",
    "License",
    "Contributor",
    "Incorporation Date",
    "Release",
    "S3",
    "DockerHub",
    "Docker Architecture",
    "Model Size",
    "Environment Size",
    "Image Size",
    "Computational Performance 1",
    "Computational Performance 2",
    "Computational Performance 3",
    "Computational Performance 4",
    "Computational Performance 5",
)
_EXAMPLES = {"Identifier": "Identifier: eos3b5e", "Slug": "Slug: molecular-weight"}


def is_safe_name(value: str) -> bool:
    """A name that can become a folder or environment name: no separators, no '..'."""
    return bool(SAFE_NAME.match(value)) and ".." not in value


def _plain(value: Any) -> Any:
    """YAML values as JSON values: dates become ISO strings, keys become strings."""
    if isinstance(value, (dt.date, dt.datetime, dt.time)):
        return value.isoformat()
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_plain(item) for item in value]
    if isinstance(value, float) and value != value:
        return None
    return value


def metadata_file(model_dir: Path) -> Path | None:
    """metadata.json when it exists (it wins), else metadata.yml / metadata.yaml."""
    for name in ("metadata.json", "metadata.yml", "metadata.yaml"):
        if (model_dir / name).is_file():
            return model_dir / name
    return None


def _parse(path: Path, problems: list[Problem]) -> Any:
    text = path.read_text(encoding="utf-8", errors="replace")
    if path.suffix == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as error:
            problems.append(
                Problem(
                    path.name,
                    f"is not valid JSON: {error.msg} at line {error.lineno}, column {error.colno}",
                    "fix the syntax; a JSON linter shows where",
                )
            )
            return None
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        reason = getattr(error, "problem", None) or "malformed YAML"
        problems.append(
            Problem(
                path.name,
                f"is not valid YAML: {reason}{where}",
                "check indentation and quote values that hold ':' or '#'",
            )
        )
        return None


def read_metadata(model_dir: Path, problems: list[Problem]) -> tuple[dict[str, Any], str]:
    """The card and its file name; problems are appended, never raised."""
    path = metadata_file(model_dir)
    if path is None:
        problems.append(
            Problem(
                "metadata.json",
                "is missing (neither metadata.json nor metadata.yml exists)",
                "add metadata.yml with at least Identifier and Slug",
            )
        )
        return {}, "metadata.yml"
    reported = len(problems)
    raw = _parse(path, problems)
    if len(problems) > reported:
        return {}, path.name
    if raw is None:
        raw = {}  # an empty card (or only comments, or null): report what it lacks below
    if not isinstance(raw, dict):
        problems.append(
            Problem(
                path.name,
                f"must be a mapping of fields, got {type(raw).__name__}",
                "write one 'Field: value' per line",
            )
        )
        return {}, path.name
    card: dict[str, Any] = _plain(raw)
    for key in ("Identifier", "Slug"):
        value = card.get(key)
        if value is None or value == "":
            problems.append(Problem(path.name, f"'{key}' is missing", f"e.g. {_EXAMPLES[key]}"))
        elif not isinstance(value, str) or not is_safe_name(value):
            problems.append(
                Problem(
                    path.name,
                    f"'{key}' is {json.dumps(value)}, not a safe name",
                    "use letters, digits, '.', '_' and '-' only, starting with a letter or digit",
                )
            )
    return card, path.name
