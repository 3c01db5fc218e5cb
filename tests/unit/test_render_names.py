"""Python names the generated code gives columns: safe ASCII identifiers, never clashing."""

from __future__ import annotations

import keyword

import pytest

from ersilia_pack.render import _identifier


@pytest.mark.parametrize(
    "name, expected",
    [
        ("mol_weight", "mol_weight"),
        ("r²", "r2"),
        ("naïve", "naive"),
        ("log P (o/w)", "log_p__o_w_"),
        ("class", "col_class"),
        ("2nd", "col_2nd"),
        ("model_score", "col_model_score"),
        ("λ", "column"),
        ("", "column"),
    ],
)
def test_a_column_name_becomes_a_safe_ascii_identifier(name: str, expected: str) -> None:
    identifier = _identifier(name, set())
    assert identifier == expected
    assert identifier.isascii() and identifier.isidentifier()
    assert not keyword.iskeyword(identifier)


def test_names_that_meet_in_ascii_get_their_own_identifiers() -> None:
    taken: set[str] = set()
    names = [_identifier(name, taken) for name in ["r²", "r2", "R2", "r₂"]]
    assert names == ["r2", "r2_2", "r2_3", "r2_4"]
