"""Rendering a bundle: the generated app from Jinja templates, plus the JSON files beside it."""

from __future__ import annotations

import json
import keyword
import re
import shutil
import unicodedata
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel

from ersilia_pack import __version__, templating
from ersilia_pack.errors import RenderError
from ersilia_pack.install.plan import InstallPlan
from ersilia_pack.model_dir import ModelSpec
from ersilia_pack.runtime.bundle.columns import convert_value
from ersilia_pack.runtime.bundle.environment import Environment
from ersilia_pack.runtime.bundle.manifest import (
    ApiDefinition,
    InstallRecord,
    Manifest,
    write_manifest,
)
from ersilia_pack.runtime.http.io import shape

FRAMING_MODULE = "ersilia_framing.py"
# The model-side programs, copied as they are (the same in every bundle), and their names in
# app/: the frames keep a name of their own there, beside the model's modules.
_MODEL_SIDE = {"worker.py": "worker.py", "warm.py": "warm.py", "framing.py": FRAMING_MODULE}

_RESERVED = {
    "model_config",
    "model_fields",
    "model_computed_fields",
    "copy",
    "dict",
    "json",
    "schema",
    "construct",
    "validate",
    "fields",
    "parse_obj",
    "parse_raw",
}
_COPY_IGNORE = shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints", ".git")


class FieldContext(BaseModel):
    attribute: str
    name: str
    annotation: str
    description: str


class ApiContext(BaseModel):
    name: str
    module: str
    row_class: str
    kind: str
    fields: list[FieldContext]


class RenderContext(BaseModel):
    """Everything the templates see; StrictUndefined makes a missing name fail the render."""

    model_id: str
    slug: str
    title: str
    version: str
    tag: str
    apis: list[ApiContext]
    plan: InstallPlan

    @property
    def needs_any(self) -> bool:
        return any(f.annotation == "Any" for api in self.apis for f in api.fields)


def new_tag() -> str:
    """A bundle tag that sorts by time."""
    return datetime.now(timezone.utc).strftime("%Y%m%d-%H%M%S-%f")


def _identifier(name: str, taken: set[str]) -> str:
    """A safe ASCII Python identifier for a column name (the name itself becomes an alias).

    ASCII only: a name such as ``r²`` is word characters to a regular expression yet no
    identifier to Python, and identifiers are NFKC-normalised, so two names could collide.
    """
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode()
    base = re.sub(r"[^0-9A-Za-z_]", "_", ascii_name.strip()).lower() or "column"
    if (
        base[0].isdigit()
        or keyword.iskeyword(base)
        or base in _RESERVED
        or base.startswith(("model_", "_"))
    ):
        base = f"col_{base.lstrip('_')}"
    candidate, number = base, 2
    while candidate in taken:
        candidate, number = f"{base}_{number}", number + 1
    taken.add(candidate)
    return candidate


def _class_name(name: str) -> str:
    return "".join(part.capitalize() for part in re.split(r"[^A-Za-z0-9]+", name) if part) + "Row"


_ANNOTATIONS = {
    "float": "float | None",
    "integer": "int | None",
    "string": "str | None",
    "other": "Any",
}


def _api_context(api: ApiDefinition, modules: set[str]) -> ApiContext:
    """An API's names in the generated code; ``modules`` holds those other APIs took."""
    taken: set[str] = set()
    fields = [
        FieldContext(
            attribute=_identifier(column.name, taken),
            name=column.name,
            annotation=_ANNOTATIONS[column.type],
            description=column.description or f"{column.type} output column",
        )
        for column in api.columns
    ]
    # APIs whose names differ only in case or punctuation (my-api, my_api) need their own
    # module and row class, or one would overwrite the other.
    base, suffix, number = "api_" + re.sub(r"\W", "_", api.name).lower(), "", 2
    while base + suffix in modules:
        suffix, number = f"_{number}", number + 1
    modules.add(base + suffix)
    return ApiContext(
        name=api.name,
        module=base + suffix,
        row_class=_class_name(api.name + suffix),
        kind=api.kind,
        fields=fields,
    )


def render_template(name: str, context: RenderContext, **extra: Any) -> str:
    """Render one template with the context's fields."""
    values = {**dict(context), "needs_any": context.needs_any, **extra}
    return templating.render(name, values, error=RenderError)


def example_records(api: ApiDefinition) -> list[dict[str, Any]]:
    """An API's example output as typed records, as ``POST /<api>`` would answer."""
    types = [column.type for column in api.columns]
    rows = [
        [convert_value(value, kind) for value, kind in zip(row, types)]
        for row in api.example_output
    ]
    records: list[dict[str, Any]] = shape(list(rows), api.column_names, "records")
    return records


def api_schema(spec: ModelSpec) -> dict[str, Any]:
    """The Ersilia client's view of each API: inputs and the type of the outcome array."""
    schema: dict[str, Any] = {}
    for api in spec.apis:
        types = {column.type for column in api.columns}
        if types and types <= {"float", "integer"}:
            kind = "numeric_array"
        elif types == {"string"}:
            kind = "string_array"
        else:
            kind = "mixed_array"
        schema[api.name] = {
            "input": {
                "key": {"type": "string"},
                "input": {"type": "string"},
                "text": {"type": "string"},
            },
            "output": {
                "outcome": {"type": kind, "shape": [len(api.columns)], "meta": api.column_names}
            },
        }
    return schema


def _write_json(path: Path, payload: Any) -> None:
    text = templating.clean_text(json.dumps(payload, indent=2, ensure_ascii=False))
    path.write_text(text + "\n", encoding="utf-8")


def _write_python(path: Path, source: str) -> None:
    """Write a generated module, refusing one that does not compile."""
    try:
        compile(source, str(path), "exec", dont_inherit=True)
    except SyntaxError as error:
        raise RenderError(
            f"the generated {path.parent.name}/{path.name} does not compile "
            f"(line {error.lineno}: {error.msg}); please report this as a bug of ersilia_pack"
        ) from error
    path.write_text(source, encoding="utf-8")


def render_bundle(
    spec: ModelSpec,
    target: Path,
    *,
    tag: str,
    environment: Environment,
    install: InstallRecord,
) -> Manifest:
    """Write a complete bundle (all but status.json) into ``target``."""
    target.mkdir(parents=True, exist_ok=True)
    shutil.copytree(spec.root / "model", target / "model", ignore=_COPY_IGNORE, dirs_exist_ok=True)
    modules: set[str] = set()
    context = RenderContext(
        model_id=spec.model_id,
        slug=spec.slug,
        title=str(spec.metadata.get("Title") or spec.model_id),
        version=__version__,
        tag=tag,
        apis=[_api_context(api, modules) for api in spec.apis],
        plan=spec.plan,
    )
    app_dir = target / "app"
    app_dir.mkdir(exist_ok=True)
    for name in ("__init__", "main", "schemas"):
        _write_python(app_dir / f"{name}.py", render_template(f"app/{name}.py.j2", context))
    # The worker, the warm runner and their frames, as they are: the server reads the frames
    # with the same module.
    model_side = resources.files("ersilia_pack.model_side")
    for source, name in _MODEL_SIDE.items():
        (app_dir / name).write_bytes(model_side.joinpath(source).read_bytes())
    examples_dir = app_dir / "examples"
    examples_dir.mkdir(exist_ok=True)
    for api, api_context in zip(spec.apis, context.apis):
        _write_python(
            app_dir / f"{api_context.module}.py",
            render_template("app/api.py.j2", context, api=api_context),
        )
        _write_json(
            examples_dir / f"{api.name}.json",
            {
                "input": api.example_input,
                "output": example_records(api),
                "columns": [column.model_dump() for column in api.columns],
            },
        )
    installs = target / "installs"
    installs.mkdir(exist_ok=True)
    (installs / "install.sh").write_text(
        render_template("install.sh.j2", context), encoding="utf-8"
    )
    _write_json(
        target / "information.json",
        {
            "card": spec.metadata,
            "model_id": spec.model_id,
            "Slug": spec.slug,
            "api_list": [api.name for api in spec.apis],
        },
    )
    _write_json(target / "api_schema.json", api_schema(spec))
    manifest = Manifest(
        ersilia_pack_version=__version__,
        created=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        tag=tag,
        model_id=spec.model_id,
        slug=spec.slug,
        model_hash=spec.model_hash,
        environment=environment,
        install=install,
        apis=spec.apis,
        output_consistency=spec.output_consistency,
    )
    write_manifest(target, manifest)
    return manifest
