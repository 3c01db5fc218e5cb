"""The manifest's record of each API: what the model directory declares beside what the pack
decided, and manifests written before the decisions had a record of their own."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from ersilia_pack.runtime.bundle.manifest import (
    ApiDefinition,
    PackDecisions,
    load_bundle,
    write_manifest,
)

# An API as manifests written before ``decided`` held it: the decisions flat beside the rest.
OLD_API: dict[str, Any] = {
    "name": "run",
    "kind": "sh",
    "script": "run.sh",
    "class_name": None,
    "columns": [{"name": "mw", "type": "float", "direction": "", "description": ""}],
    "example_input": ["CCO"],
    "example_output": [["46.07"]],
    "warm_script": "code/main.py",
    "warm": True,
    "serial": True,
    "fork": False,
    "in_process": True,
    "gpu": True,
}
OLD_MANIFEST: dict[str, Any] = {
    "ersilia_pack_version": "0.1.0",
    "created": "2025-01-02T03:04:05Z",
    "tag": "20250102-030405-000000",
    "model_id": "eos3b5e",
    "slug": "molecular-weight",
    "model_hash": "0" * 64,
    "environment": {"backend": "system", "prefix": None, "python": "python3"},
    "install": {"source": "install.sh"},
    "apis": [OLD_API, {"name": "plain", "kind": "py", "script": "plain.py"}],
}


def test_a_manifest_with_flat_decisions_loads_with_the_same_meaning(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps(OLD_MANIFEST), encoding="utf-8")
    apis = load_bundle(tmp_path).apis
    assert apis["run"].decided == PackDecisions(
        warm=True, serial=True, fork=False, in_process=True, gpu=True
    )
    assert apis["run"].warm_script == "code/main.py"
    assert apis["run"].column_names == ["mw"]
    # an API with no decisions written gets the defaults: cold, overlapping, forked, CPU
    assert apis["plain"].decided == PackDecisions()
    assert (apis["plain"].decided.fork, apis["plain"].decided.warm) == (True, False)


def test_a_manifest_is_written_with_the_decisions_in_their_own_record(tmp_path: Path) -> None:
    (tmp_path / "manifest.json").write_text(json.dumps(OLD_MANIFEST), encoding="utf-8")
    write_manifest(tmp_path, load_bundle(tmp_path).manifest)
    (api, _) = json.loads((tmp_path / "manifest.json").read_text(encoding="utf-8"))["apis"]
    assert api["decided"] == {
        "warm": True,
        "serial": True,
        "fork": False,
        "in_process": True,
        "gpu": True,
    }
    assert not {"warm", "serial", "fork", "in_process", "gpu"} & api.keys()
    assert load_bundle(tmp_path).apis["run"].decided.serial is True


def test_the_decisions_cannot_be_changed_in_place_only_copied() -> None:
    api = ApiDefinition.model_validate(OLD_API)
    with pytest.raises(ValidationError, match="frozen"):
        api.decided.warm = False  # type: ignore[misc]
    cold = api.with_decisions(warm=False)
    assert (cold.decided.warm, cold.decided.serial, cold.decided.in_process) == (False, True, True)
    assert api.decided.warm is True
