"""A model with 2,000 output columns answers every value right."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest
from heavy_helpers import manifest_apis, uncached_client
from helpers import wait_ready

pytestmark = pytest.mark.slow

COLUMNS = 2000


def expected_row(text: str) -> dict[str, float]:
    code = sum(map(ord, text))
    return {f"dim_{j:04d}": (code * (j + 1)) % 1000 / 8 for j in range(COLUMNS)}


@pytest.mark.parametrize("cold", [False, True], ids=["warm", "cold"])
def test_two_thousand_columns_answer_right(packed: Callable[..., Path], cold: bool) -> None:
    bundle = packed("wide-output")
    inputs = [f"C{'c' * number}N{number}" for number in range(60)]

    with uncached_client(bundle, workers=2, cold=cold, timeout=60) as client:
        wait_ready(client)
        response = client.post("/run", json=inputs)

    assert manifest_apis(bundle)["run"]["decided"]["warm"] is True
    assert response.status_code == 200, response.text
    rows = response.json()
    assert len(rows) == len(inputs)
    for text, row in zip(inputs, rows):
        assert list(row) == [f"dim_{j:04d}" for j in range(COLUMNS)]
        assert row == expected_row(text)
