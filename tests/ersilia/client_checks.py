"""What the Ersilia client needs from a packed bundle and from a served model, checked against
the fixtures' own files."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml
from fixture_models import MODEL_IDS, NEWER, OLDER
from like_client import NO_BODY, call, example_inputs, expected_records

CURRENT_PYTHON = f"{sys.version_info.major}.{sys.version_info.minor}"
WANTED_PYTHON = {NEWER: "3.10", OLDER: "3.11"}
SCHEMA = {
    NEWER: ("numeric_array", ["heavy_atoms", "mass_proxy", "ring_fraction", "polarity"]),
    OLDER: ("string_array", ["size_class", "first_atom", "ring_label"]),
}
# Files other tools (the Ersilia client among them) add to a bundle after packing.
ADDED_BY_OTHER_TOOLS = {
    "apis_list.txt": "run\n",
    "service_class.txt": "pulled_docker\n",
    "pack_method.txt": "fastapi\n",
}


def card_of(model_dir: Path) -> dict[str, Any]:
    """The metadata card as JSON would hold it (YAML dates as ISO strings)."""
    if (model_dir / "metadata.json").is_file():
        card: dict[str, Any] = json.loads((model_dir / "metadata.json").read_text())
        return card
    card = yaml.safe_load((model_dir / "metadata.yml").read_text())
    return {
        key: value.isoformat() if hasattr(value, "isoformat") else value
        for key, value in card.items()
    }


def packed_into(stdout: str) -> Path:
    """The bundle a pack command says it wrote."""
    match = re.search(r"^packed \S+ into (\S+)$", stdout, re.MULTILINE)
    assert match, stdout
    return Path(match.group(1))


def check_python_warning(model_dir: Path, backend: str, stderr: str) -> None:
    """A backend that cannot give the model its Python version says so, and only then."""
    wanted = WANTED_PYTHON[model_dir]
    warning = f"the model asks for Python {wanted} but --{backend} uses Python {CURRENT_PYTHON}"
    assert (warning in stderr) is (wanted != CURRENT_PYTHON), stderr


def assert_bundle_for_the_client(bundle: Path, model_dir: Path) -> None:
    """The files the Ersilia client reads or copies from a bundle."""
    model_id = MODEL_IDS[model_dir]
    card = card_of(model_dir)
    assert bundle.parent.name == model_id
    assert (bundle / "installs" / "install.sh").is_file()
    assert (bundle / "model" / "framework" / "run.sh").read_text() == "python $1/code/main.py $2 $3"
    assert json.loads((bundle / "status.json").read_text()) == {"done": True}
    assert json.loads((bundle / "information.json").read_text()) == {
        "card": card,
        "model_id": model_id,
        "Slug": card["Slug"],
        "api_list": ["run"],
    }
    kind, names = SCHEMA[model_dir]
    assert json.loads((bundle / "api_schema.json").read_text()) == {
        "run": {
            "input": {
                "key": {"type": "string"},
                "input": {"type": "string"},
                "text": {"type": "string"},
            },
            "output": {"outcome": {"type": kind, "shape": [len(names)], "meta": names}},
        }
    }


def assert_serves_like_the_client(base_url: str, model_dir: Path, bundle: Path) -> None:
    """Every request the Ersilia client makes, and the answers it needs."""
    model_id = MODEL_IDS[model_dir]
    framework = model_dir / "model" / "framework"
    card = card_of(model_dir)

    root = call(base_url, "GET", "/")
    assert 200 <= root.status < 300
    assert root.json() == {model_id: card["Slug"]}

    inputs = [*example_inputs(framework), example_inputs(framework)[0]]
    expected = [*expected_records(framework), expected_records(framework)[0]]
    run = call(base_url, "POST", "/run?fetch_cache=True&save_cache=False", inputs)
    assert run.status == 200, run.body
    assert run.headers["content-type"] == "application/json"
    assert run.json() == expected
    assert [list(record) for record in run.json()] == [list(record) for record in expected]

    keyed = [{"key": f"k{i}", "input": smiles, "text": smiles} for i, smiles in enumerate(inputs)]
    again = call(base_url, "POST", "/run?fetch_cache=True&save_cache=False", keyed)
    assert again.status == 200, again.body
    assert again.json() == expected

    info = call(base_url, "POST", "/info", {})
    assert info.status == 200, info.body
    body = info.json()
    assert body["apis_list"] == ["run"]
    assert body["api_schema"] == json.loads((bundle / "api_schema.json").read_text())
    assert body["model_id"] == model_id
    assert body["card"] == card

    head = call(base_url, "HEAD", "/info", NO_BODY)
    assert head.status == 200
    assert head.body == b""
