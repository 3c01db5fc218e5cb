"""Reading and validating a model directory into one typed ModelSpec."""

from __future__ import annotations

import ast
import csv
import hashlib
import os
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from ersilia_pack.errors import ModelDirError, Problem
from ersilia_pack.install.plan import InstallPlan, read_plan
from ersilia_pack.metadata import is_safe_name, read_metadata
from ersilia_pack.runtime.bundle.columns import COLUMN_TYPES, Column, infer_type
from ersilia_pack.runtime.bundle.manifest import ApiDefinition
from ersilia_pack.runtime.http.routes import RESERVED_API_NAMES

_INPUT_HEADERS = ("input", "smiles", "text")
_ID_HEADERS = ("key", "input", "smiles", "text")
ApiKind = Literal["sh", "py"]
_IGNORED_DIRS = {".git", "__pycache__", ".ipynb_checkpoints"}


_LFS_HEADER = b"version https://git-lfs.github.com/spec/v1"
# Pointer files are about 130 bytes; nothing bigger is read to look for one.
_LFS_POINTER_MAX_BYTES = 256


class LfsPointer(BaseModel):
    """A Git LFS pointer file found where the real file should be (cloned without LFS)."""

    path: str  # relative to the model directory
    size: int | None = None  # bytes of the real file, as the pointer says

    def warning(self) -> str:
        size = f"{self.size:,} bytes" if self.size is not None else "size unknown"
        return (
            f"{self.path} is a Git LFS pointer, not the file itself (the real file: {size}); "
            "fetch it with `git lfs pull` in the model's repository, then pack again"
        )


class ModelSpec(BaseModel):
    """Everything later steps need from a model directory; nothing reads the directory again."""

    model_config = ConfigDict(arbitrary_types_allowed=True)

    root: Path
    metadata: dict[str, Any]
    metadata_file: str
    model_id: str
    slug: str
    apis: list[ApiDefinition]
    plan: InstallPlan
    model_hash: str
    lfs_pointers: list[LfsPointer] = []
    warnings: list[str] = []

    @property
    def python_version(self) -> str | None:
        return self.plan.python

    @property
    def output_consistency(self) -> str:
        return str(self.metadata.get("Output Consistency") or "Fixed")


def _read_csv(path: Path) -> list[list[str]]:
    # An example may hold a field longer than the csv module's default limit (128 KiB), as a
    # model's output may; the engine reads outputs with the same limit.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))
    with path.open(newline="", encoding="utf-8-sig", errors="replace") as handle:
        return [row for row in csv.reader(handle) if row]


def _first_existing(paths: list[Path]) -> Path | None:
    return next((path for path in paths if path.is_file()), None)


def _example_paths(model_dir: Path, api: str, kind: str) -> list[Path]:
    examples = model_dir / "model" / "framework" / "examples"
    return [
        examples / f"{api}_{kind}.csv",
        examples / f"{kind}.csv",
        model_dir / f"example_{kind}.csv",
    ]


def _example_input(path: Path) -> list[str]:
    rows = _read_csv(path)
    if not rows:
        return []
    header = [name.strip().lower() for name in rows[0]]
    column = next((header.index(name) for name in _INPUT_HEADERS if name in header), 0)
    return [row[column] if column < len(row) else "" for row in rows[1:]]


def _read_columns(path: Path, problems: list[Problem], where: str) -> list[Column]:
    rows = _read_csv(path)
    if not rows:
        problems.append(
            Problem(
                where,
                "is empty",
                "add a header 'name,type,direction,description' and one row per output column",
            )
        )
        return []
    header = [name.strip().lower() for name in rows[0]]
    if "name" not in header or "type" not in header:
        problems.append(
            Problem(
                where,
                f"header is {rows[0]}, it needs 'name' and 'type'",
                "use the header name,type,direction,description",
            )
        )
        return []
    field = {name: header.index(name) for name in header}
    columns: list[Column] = []
    for number, row in enumerate(rows[1:], start=2):
        values = {name: (row[i].strip() if i < len(row) else "") for name, i in field.items()}
        kind = values["type"].lower()
        if kind not in COLUMN_TYPES:
            problems.append(
                Problem(
                    where,
                    f"line {number}: type {values['type']!r} of column "
                    f"{values['name']!r} is not one of {', '.join(COLUMN_TYPES)}",
                    "use float, integer, string or other",
                )
            )
            continue
        columns.append(
            Column.model_validate(
                {
                    "name": values["name"],
                    "type": kind,
                    "direction": values.get("direction", ""),
                    "description": values.get("description", ""),
                }
            )
        )
    return columns


def _load_once_class(path: Path) -> str | None:
    """The class of a ``.py`` file that has both ``load`` and ``predict``; None otherwise."""
    try:
        tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
    except SyntaxError:
        return None
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            methods = {item.name for item in node.body if isinstance(item, ast.FunctionDef)}
            if {"load", "predict"} <= methods:
                return node.name
    return None


_PYTHONS = ("python", "python3")
_FRAMEWORK_ARGS = ("$1", "${1}")
_FILE_ARGS = (["$2", "$3"], ["${2}", "${3}"])


def warm_script(framework: Path, script: str) -> str | None:
    """The Python script of a ``python <script>.py $2 $3`` API, relative to the framework.

    Only that exact shape (with or without ``$1/``, quotes or a final newline) can run warm;
    anything else runs cold.
    """
    text = (framework / script).read_text(encoding="utf-8", errors="replace")
    lines = [line.strip() for line in text.splitlines()]
    commands = [line for line in lines if line and not line.startswith("#")]
    if len(commands) != 1:
        return None
    try:
        words = shlex.split(commands[0])
    except ValueError:
        return None
    if words[:1] == ["exec"]:
        words = words[1:]
    if len(words) != 4 or words[0] not in _PYTHONS or words[2:] not in _FILE_ARGS:
        return None
    target = words[1]
    for prefix in _FRAMEWORK_ARGS:
        if target.startswith(prefix + "/"):
            target = target[len(prefix) + 1 :]
    if "$" in target or not target.endswith(".py"):
        return None
    path = (framework / target).resolve()
    if not path.is_file() or framework.resolve() not in path.parents:
        return None
    return path.relative_to(framework.resolve()).as_posix()


def _split_example_output(
    rows: list[list[str]], columns: list[Column]
) -> tuple[list[str], list[list[str]]]:
    """Header and rows of an example output, without leading key/input columns it may carry."""
    header, body = [name.strip() for name in rows[0]], rows[1:]
    names = [column.name for column in columns]
    if names and set(names) <= set(header):
        index = [header.index(name) for name in names]
        return names, [[row[i] if i < len(row) else "" for i in index] for row in body]
    skip = 0
    while (
        skip < len(header) - 1 and header[skip].lower() in _ID_HEADERS and header[skip] not in names
    ):
        skip += 1
    return header[skip:], [row[skip:] for row in body]


def _read_api(
    model_dir: Path,
    name: str,
    script: str,
    kind: ApiKind,
    class_name: str | None,
    problems: list[Problem],
) -> ApiDefinition:
    framework = model_dir / "model" / "framework"
    columns_file = framework / "columns" / f"{name}_columns.csv"
    columns: list[Column] = []
    reported = len(problems)
    if columns_file.is_file():
        columns = _read_columns(
            columns_file, problems, f"model/framework/columns/{columns_file.name}"
        )
    columns_unreadable = len(problems) > reported
    inputs_file = _first_existing(_example_paths(model_dir, name, "input"))
    outputs_file = _first_existing(_example_paths(model_dir, name, "output"))
    example_input = _example_input(inputs_file) if inputs_file else []
    example_output: list[list[str]] = []
    if outputs_file:
        rows = _read_csv(outputs_file)
        if rows:
            header, example_output = _split_example_output(rows, columns)
            if not columns:
                columns = [
                    Column(
                        name=column,
                        type=infer_type([row[i] if i < len(row) else "" for row in example_output]),
                    )
                    for i, column in enumerate(header)
                ]
        where = str(outputs_file.relative_to(model_dir))
        if example_input and len(example_output) != len(example_input):
            problems.append(
                Problem(
                    where,
                    f"has {len(example_output)} rows but the example "
                    f"input has {len(example_input)}",
                    "regenerate the example output from the example input",
                )
            )
    if not columns and not columns_unreadable:
        # Without column names the server could neither document nor return the outputs.
        problems.append(
            Problem(
                f"model/framework/columns/{name}_columns.csv",
                "names no output column"
                if columns_file.is_file()
                else f"is missing, and no example output of {name} names its output columns",
                "list each output column as name,type,direction,description, or add "
                f"model/framework/examples/{name}_output.csv with a header row",
            )
        )
    return ApiDefinition(
        name=name,
        kind=kind,
        script=script,
        class_name=class_name,
        warm_script=warm_script(framework, script) if kind == "sh" else None,
        columns=columns,
        example_input=example_input,
        example_output=example_output,
    )


def _read_apis(model_dir: Path, problems: list[Problem]) -> list[ApiDefinition]:
    framework = model_dir / "model" / "framework"
    if not framework.is_dir():
        problems.append(
            Problem(
                "model/framework",
                "is missing",
                "put each API's script there, e.g. model/framework/run.sh",
            )
        )
        return []
    found: dict[str, tuple[str, ApiKind, str | None]] = {}
    for path in sorted(framework.glob("*.sh")):
        found[path.stem] = (path.name, "sh", None)
    for path in sorted(framework.glob("*.py")):
        class_name = _load_once_class(path)
        if class_name:
            found[path.stem] = (path.name, "py", class_name)
    apis: list[ApiDefinition] = []
    for name, (script, kind, class_name) in sorted(found.items()):
        if not is_safe_name(name):
            problems.append(
                Problem(
                    f"model/framework/{script}",
                    f"API name {name!r} is not a safe name",
                    "rename it with letters, digits, '_' or '-'",
                )
            )
            continue
        if name in RESERVED_API_NAMES:
            problems.append(
                Problem(
                    f"model/framework/{script}",
                    f"API name {name!r} is reserved: every served model has a route /{name}",
                    "rename the script; the reserved API names are "
                    + ", ".join(sorted(RESERVED_API_NAMES)),
                )
            )
            continue
        apis.append(_read_api(model_dir, name, script, kind, class_name, problems))
    if not apis:
        problems.append(
            Problem(
                "model/framework",
                "has no API script",
                "add run.sh (bash run.sh FRAMEWORK INPUT OUTPUT) or a run.py "
                "defining a class with load() and predict()",
            )
        )
    return apis


def _check_bash_syntax(model_dir: Path, apis: list[ApiDefinition], problems: list[Problem]) -> None:
    """``bash -n`` on the install scripts and every ``.sh`` API: a syntax error is found here,
    with bash's own message, rather than after the install when the script first runs."""
    bash = shutil.which("bash")
    if bash is None:
        return
    scripts = sorted(model_dir.glob("install*.sh")) + [
        model_dir / "model" / "framework" / api.script for api in apis if api.kind == "sh"
    ]
    for path in scripts:
        if not path.is_file():
            continue
        try:
            checked = subprocess.run(
                [bash, "-n", str(path)],
                capture_output=True,
                text=True,
                errors="replace",
                timeout=30,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue  # bash could not say; the run will
        if checked.returncode == 0:
            continue
        where = path.relative_to(model_dir).as_posix()
        lines = [line.replace(f"{path}: ", "") for line in checked.stderr.splitlines()]
        message = "; ".join(line.strip() for line in lines if line.strip())[:500]
        problems.append(
            Problem(
                where,
                f"is not valid bash: {message or f'bash -n exited with {checked.returncode}'}",
                f"fix that line; bash -n {where} checks the file",
            )
        )


def _check_symlinks(model_dir: Path, problems: list[Problem]) -> bool:
    """Report links that leave the model directory, loop, or hold their own folder.

    Returns False when a bad link lies where the other checks read files (anything outside
    ``model/checkpoints``): reading through it could take a file from elsewhere, or never
    end on a device or a pipe, so validation stops there.
    """
    root = model_dir.resolve()
    checkpoints = root / "model" / "checkpoints"
    readable = True
    for current, dirs, files in os.walk(model_dir):
        dirs[:] = [d for d in dirs if d not in _IGNORED_DIRS]
        for name in [*dirs, *files]:
            path = Path(current) / name
            if not path.is_symlink():
                continue
            where = str(path.relative_to(model_dir))
            link = os.readlink(path)
            parent = path.parent.resolve()
            try:
                target = path.resolve()
            except (OSError, RuntimeError):  # RuntimeError: a loop, before Python 3.13
                problem = Problem(where, f"is a symlink loop ({link})", "remove the link")
            else:
                if target != root and root not in target.parents:
                    problem = Problem(
                        where,
                        f"is a symlink to {link}, outside the model directory",
                        "copy the file in, or remove the link",
                    )
                elif target.is_dir() and (target == parent or target in parent.parents):
                    problem = Problem(
                        where,
                        f"is a symlink to {link}, a folder that holds the link itself",
                        "remove the link: copying it would never end",
                    )
                else:
                    continue
            problems.append(problem)
            if parent != checkpoints and checkpoints not in parent.parents:
                readable = False
    return readable


_SPECIAL_FILES = (
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _check_special_files(model_dir: Path, problems: list[Problem]) -> bool:
    """Report pipes, sockets and devices: reading one (to hash or copy it) may never end.

    Returns False when there is one, so validation stops before reading anything.
    """
    found = False
    for current, dirs, files in os.walk(model_dir):
        dirs[:] = [d for d in dirs if d not in _IGNORED_DIRS]
        for name in files:
            path = Path(current) / name
            try:
                mode = path.lstat().st_mode  # links are _check_symlinks' business
            except OSError:
                continue
            kind = next((kind for test, kind in _SPECIAL_FILES if test(mode)), None)
            if kind is not None:
                found = True
                problems.append(
                    Problem(
                        str(path.relative_to(model_dir)),
                        f"is {kind}, not a regular file",
                        "remove it: a model directory holds only files, folders and links to them",
                    )
                )
    return not found


def find_lfs_pointers(model_dir: Path) -> list[LfsPointer]:
    """Git LFS pointer files under ``model/`` (only files of a few hundred bytes are read)."""
    found: list[LfsPointer] = []
    model = model_dir / "model"
    for current, dirs, files in os.walk(model):
        dirs[:] = sorted(d for d in dirs if d not in _IGNORED_DIRS)
        for name in sorted(files):
            path = Path(current) / name
            try:
                info = path.stat()
                if not stat.S_ISREG(info.st_mode) or info.st_size > _LFS_POINTER_MAX_BYTES:
                    continue
                head = path.read_bytes()
            except OSError:
                continue
            if not head.startswith(_LFS_HEADER):
                continue
            size = None
            for line in head.decode("utf-8", errors="replace").splitlines():
                key, _, value = line.partition(" ")
                if key == "size" and value.strip().isdigit():
                    size = int(value)
            found.append(LfsPointer(path=path.relative_to(model_dir).as_posix(), size=size))
    return sorted(found, key=lambda pointer: pointer.path)


def hash_model_dir(model_dir: Path) -> str:
    """A hash of the metadata, install files and model/ folder (names and contents)."""
    digest = hashlib.sha256()
    paths = [
        p
        for p in model_dir.iterdir()
        if p.is_file() and p.name.startswith(("metadata", "install", "Dockerfile", "example_"))
    ]
    model = model_dir / "model"
    if model.is_dir():
        for current, dirs, files in os.walk(model):
            dirs[:] = sorted(d for d in dirs if d not in _IGNORED_DIRS)
            paths.extend(Path(current) / name for name in sorted(files))
    for path in sorted(paths):
        if path.is_symlink() and not path.exists():
            continue
        digest.update(str(path.relative_to(model_dir)).encode() + b"\0")
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()


def read_model_dir(model_dir: Path, *, variant: str | None = None) -> ModelSpec:
    """Read and validate a model directory; ModelDirError lists every problem at once."""
    model_dir = Path(model_dir).expanduser()
    if not model_dir.is_dir():
        raise ModelDirError(
            [
                Problem(
                    str(model_dir),
                    "does not exist or is not a folder",
                    "pass the folder holding metadata.yml and model/",
                )
            ]
        )
    problems: list[Problem] = []
    links_readable = _check_symlinks(model_dir, problems)
    if not _check_special_files(model_dir, problems) or not links_readable:
        raise ModelDirError(problems, str(model_dir))
    metadata, metadata_name = read_metadata(model_dir, problems)
    plan = read_plan(model_dir, problems, variant=variant)
    apis = _read_apis(model_dir, problems)
    _check_bash_syntax(model_dir, apis, problems)
    if problems:
        raise ModelDirError(problems, str(model_dir))
    pointers = find_lfs_pointers(model_dir)
    return ModelSpec(
        root=model_dir.resolve(),
        metadata=metadata,
        metadata_file=metadata_name,
        model_id=metadata["Identifier"],
        slug=metadata["Slug"],
        apis=apis,
        plan=plan,
        model_hash=hash_model_dir(model_dir),
        lfs_pointers=pointers,
        warnings=[pointer.warning() for pointer in pointers],
    )
