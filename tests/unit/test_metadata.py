"""Reading the metadata card: every key kept, YAML values readable, JSON first."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import write_tree

from ersilia_pack.errors import Problem
from ersilia_pack.metadata import is_safe_name, read_metadata

YAML_CARD = """\
Identifier: eos3b5e
Slug: molecular-weight
Title: Molecular weight
Publication Year: 2004
Incorporation Date: 2024-05-01
Computational Performance 1: 10.5
Tag:
- Descriptor
- Weight
Output Dimension: 1
A Key Nobody Documents: kept as written
Nested:
  inner: 3
"""


def test_yaml_card_keeps_every_key_with_readable_values(tmp_path: Path) -> None:
    write_tree(tmp_path, {"metadata.yml": YAML_CARD})
    problems: list[Problem] = []

    card, name = read_metadata(tmp_path, problems)

    assert problems == []
    assert name == "metadata.yml"
    assert card == {
        "Identifier": "eos3b5e",
        "Slug": "molecular-weight",
        "Title": "Molecular weight",
        "Publication Year": 2004,
        "Incorporation Date": "2024-05-01",
        "Computational Performance 1": 10.5,
        "Tag": ["Descriptor", "Weight"],
        "Output Dimension": 1,
        "A Key Nobody Documents": "kept as written",
        "Nested": {"inner": 3},
    }
    # The card must survive a JSON round trip unchanged: it goes into information.json.
    assert json.loads(json.dumps(card)) == card


def test_json_card_keeps_every_key(tmp_path: Path) -> None:
    card_in = {
        "Identifier": "eos3b5e",
        "Slug": "molecular-weight",
        "Publication Year": 2004,
        "S3": "https://example.org/eos3b5e.zip",
        "Extra": [1, "two", None],
    }
    write_tree(tmp_path, {"metadata.json": json.dumps(card_in)})
    problems: list[Problem] = []

    card, name = read_metadata(tmp_path, problems)

    assert (card, name, problems) == (card_in, "metadata.json", [])


def test_json_wins_when_both_exist(tmp_path: Path) -> None:
    write_tree(
        tmp_path,
        {
            "metadata.json": json.dumps({"Identifier": "from-json", "Slug": "json-slug"}),
            "metadata.yml": "Identifier: from-yaml\nSlug: yaml-slug\n",
        },
    )
    problems: list[Problem] = []

    card, name = read_metadata(tmp_path, problems)

    assert name == "metadata.json"
    assert card == {"Identifier": "from-json", "Slug": "json-slug"}


def test_missing_card_is_a_problem_with_a_fix(tmp_path: Path) -> None:
    problems: list[Problem] = []

    card, _ = read_metadata(tmp_path, problems)

    assert card == {}
    [problem] = problems
    assert "metadata" in problem.file
    assert "missing" in problem.message
    assert "Identifier" in problem.fix and "Slug" in problem.fix


def test_malformed_yaml_names_the_line(tmp_path: Path) -> None:
    write_tree(tmp_path, {"metadata.yml": "Identifier: eos1\nSlug: [unclosed\nTitle: x\n"})
    problems: list[Problem] = []

    read_metadata(tmp_path, problems)

    [problem] = problems
    assert problem.file == "metadata.yml"
    assert "not valid YAML" in problem.message
    assert "line" in problem.message
    assert problem.fix


def test_malformed_json_names_the_line(tmp_path: Path) -> None:
    write_tree(tmp_path, {"metadata.json": '{"Identifier": "eos1",\n "Slug": }'})
    problems: list[Problem] = []

    read_metadata(tmp_path, problems)

    [problem] = problems
    assert problem.file == "metadata.json"
    assert "not valid JSON" in problem.message
    assert "line 2" in problem.message


def test_a_card_that_is_not_a_mapping_is_reported(tmp_path: Path) -> None:
    write_tree(tmp_path, {"metadata.yml": "- Identifier\n- Slug\n"})
    problems: list[Problem] = []

    card, _ = read_metadata(tmp_path, problems)

    assert card == {}
    [problem] = problems
    assert "mapping" in problem.message


def test_unsafe_and_missing_names_are_all_reported(tmp_path: Path) -> None:
    write_tree(tmp_path, {"metadata.yml": "Identifier: ../x\nTitle: no slug here\n"})
    problems: list[Problem] = []

    read_metadata(tmp_path, problems)

    messages = [str(problem) for problem in problems]
    assert len(messages) == 2, messages
    assert "'Identifier' is \"../x\", not a safe name" in messages[0]
    assert "'Slug' is missing" in messages[1]
    assert "e.g. Slug:" in messages[1]


def test_safe_names() -> None:
    for good in ("eos3b5e", "eos-demo", "molecular_weight.v2", "A1"):
        assert is_safe_name(good), good
    for bad in ("../x", "has space", "a/b", ".hidden", "-flag", "a..b", "", "x" * 101, "é"):
        assert not is_safe_name(bad), bad


@pytest.mark.parametrize(
    ("name", "text"),
    [("metadata.yml", ""), ("metadata.yml", "# only a comment\n"), ("metadata.json", "null")],
)
def test_an_empty_card_reports_both_missing_names(tmp_path: Path, name: str, text: str) -> None:
    write_tree(tmp_path, {name: text})
    problems: list[Problem] = []

    card, _ = read_metadata(tmp_path, problems)

    assert card == {}
    assert [str(problem) for problem in problems] == [
        f"{name}: 'Identifier' is missing (e.g. Identifier: eos3b5e)",
        f"{name}: 'Slug' is missing (e.g. Slug: molecular-weight)",
    ]
