"""A bundle on disk: its manifest, its APIs, and finding the newest one in a repository."""

from __future__ import annotations

import json
import re
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError, model_validator

from ersilia_pack.errors import ServeError
from ersilia_pack.runtime.bundle.columns import Column
from ersilia_pack.runtime.bundle.environment import Environment

MANIFEST = "manifest.json"
TAG_PATTERN = re.compile(r"^\d{8}-\d{6}-\d{6}$")


class PackDecisions(BaseModel):
    """How the pack-time checks decided an API is served, made once when the bundle is packed.

    The model directory declares none of it: the pack serves the new bundle, runs each API's
    example in the faster ways it could be served, and keeps those that give exactly what a
    single cold run gives.
    """

    model_config = ConfigDict(frozen=True)

    # A legacy script of the warm shape whose warm run gave exactly what its cold run gave.
    warm: bool = False
    # Overlapping runs of the example disagreed with a single run (or failed): the API is
    # served one run at a time.
    serial: bool = False
    # Slots forked from one loaded parent; False when forking after the load broke the example
    # run (threads started in load(), say) and separate ones worked.
    fork: bool = True
    # A legacy script served warm whose libraries refuse a forked process (CUDA's rule): its
    # runs happen in a warm process per slot itself, one after the other, not in forks.
    in_process: bool = False
    # The model runs on a GPU (the pack saw CUDA refuse a forked process): served with
    # --gpu-workers processes per GPU where the machine has GPUs.
    gpu: bool = False


class ApiDefinition(BaseModel):
    """One API of a model: what the model directory declares, and what the pack decided."""

    name: str
    kind: Literal["sh", "py"]
    script: str
    class_name: str | None = None
    columns: list[Column] = []
    example_input: list[str] = []
    example_output: list[list[str]] = []
    warm_script: str | None = None
    decided: PackDecisions = PackDecisions()

    @model_validator(mode="before")
    @classmethod
    def _nest_flat_decisions(cls, data: Any) -> Any:
        """A manifest written before ``decided`` keeps the decisions flat on each API: the same
        keys, moved into the record, mean the same."""
        if not isinstance(data, dict) or "decided" in data:
            return data
        flat = {key: data[key] for key in PackDecisions.model_fields if key in data}
        if not flat:
            return data
        rest = {key: value for key, value in data.items() if key not in flat}
        return {**rest, "decided": flat}

    @property
    def column_names(self) -> list[str]:
        return [column.name for column in self.columns]

    def with_decisions(self, **changes: bool) -> ApiDefinition:
        """This API with some of the pack's decisions changed: a safer mode to serve it in."""
        return self.model_copy(update={"decided": self.decided.model_copy(update=changes)})


class InstallRecord(BaseModel):
    """What the install did, kept in the manifest."""

    # the file the plan came from: install.sh, install_<variant>.sh, install.yml or Dockerfile
    source: str = ""
    python: str | None = None
    steps: list[str] = []
    reused_environment: bool = False
    # uv or pip; resolution as of a date (None: newest), why, and steps that needed the newest
    installer: str | None = None
    as_of: str | None = None
    as_of_source: str = ""
    resolved_without_as_of: list[str] = []
    # the install script variant that ran (gpu, arm, ... or default: install.sh), and why
    variant: str = ""
    variant_reason: str = ""
    # under --venv/--system: what became of each conda package ({step, conda, action, pip, note})
    conda_translation: list[dict[str, str]] = []


class Manifest(BaseModel):
    """Everything the server needs to know about a bundle, written at pack time."""

    ersilia_pack_version: str
    created: str
    tag: str
    model_id: str
    slug: str
    model_hash: str
    environment: Environment
    install: InstallRecord
    apis: list[ApiDefinition]
    output_consistency: str = "Fixed"


class Bundle:
    """A packed model: the folder ``$EOS/repository/$MODEL_ID/<tag>/``.

    What serving writes (jobs, cache, run folders) goes to ``state_dir``: the bundle's own
    ``state/`` unless another folder is given, so a read-only bundle can be served.
    """

    def __init__(self, path: Path, manifest: Manifest, *, state_dir: Path | None = None) -> None:
        self.path = path
        self.manifest = manifest
        self._state_dir = state_dir

    @property
    def framework_dir(self) -> Path:
        return self.path / "model" / "framework"

    @property
    def state_dir(self) -> Path:
        return self._state_dir if self._state_dir is not None else self.path / "state"

    @property
    def apis(self) -> dict[str, ApiDefinition]:
        return {api.name: api for api in self.manifest.apis}

    def _json(self, name: str) -> Any:
        return json.loads((self.path / name).read_text(encoding="utf-8"))

    @cached_property
    def information(self) -> dict[str, Any]:
        return dict(self._json("information.json"))

    @cached_property
    def api_schema(self) -> dict[str, Any]:
        return dict(self._json("api_schema.json"))

    @property
    def card(self) -> dict[str, Any]:
        return dict(self.information.get("card", {}))

    @property
    def output_varies(self) -> bool:
        """Whether the card says the output changes between runs on the same input.

        Output Consistency "Variable", or a generative Task: every occurrence of such an input
        is a draw of its own, never shared with another input or kept in the result cache.
        """
        if self.manifest.output_consistency.strip().lower() == "variable":
            return True
        task = self.card.get("Task") or ""
        tasks = task if isinstance(task, list) else [task]
        return any("generative" in str(item).lower() for item in tasks)


def load_bundle(path: Path, *, state_dir: Path | None = None) -> Bundle:
    """Read a bundle folder; a clear ServeError when it is not one."""
    manifest_path = path / MANIFEST
    try:
        manifest = Manifest.model_validate_json(manifest_path.read_bytes())
    except FileNotFoundError as error:
        raise ServeError(f"{path} is not a bundle: it has no {MANIFEST}") from error
    except ValidationError as error:
        raise ServeError(
            f"{manifest_path} is unreadable: {error.error_count()} problems"
        ) from error
    return Bundle(
        path.resolve(), manifest, state_dir=state_dir.expanduser().resolve() if state_dir else None
    )


def write_manifest(bundle_dir: Path, manifest: Manifest) -> None:
    """Write ``manifest.json`` of a bundle."""
    (bundle_dir / MANIFEST).write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")


def make_state_dir(bundle: Bundle) -> Path:
    """Create the bundle's state folder private to its owner (0o700), whatever the umask."""
    path = bundle.state_dir
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    path.chmod(0o700)
    return path


def _is_done(path: Path) -> bool:
    try:
        status = json.loads((path / "status.json").read_text(encoding="utf-8"))
        return bool(status.get("done"))
    except (OSError, ValueError, AttributeError):
        return False


def find_bundle(path: Path) -> Path:
    """The bundle at ``path``, or the newest finished bundle in the repository at ``path``."""
    path = path.expanduser()
    if not path.is_dir():
        raise ServeError(f"{path} does not exist or is not a folder")
    if (path / MANIFEST).is_file():
        return path
    tags = sorted(
        child
        for child in path.iterdir()
        if TAG_PATTERN.match(child.name) and (child / MANIFEST).is_file() and _is_done(child)
    )
    if not tags:
        raise ServeError(
            f"{path} holds no finished bundle: pack the model first "
            "(ersilia_pack --model_dir DIR) and pass $EOS/repository/MODEL_ID"
        )
    return tags[-1]
