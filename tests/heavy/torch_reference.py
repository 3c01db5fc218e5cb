"""The torch-net fixture's network computed here, independently of the fixture's code path.

The weights come from the fixture's checkpoint; the features and layers are written out by
hand (matrix products), so a served value that matches them is the network's real output.
"""

from __future__ import annotations

from pathlib import Path

import torch

CHECKPOINT = Path(__file__).resolve().parents[1] / "fixtures" / "torch-net" / "model"
VOCABULARY = "CNOSPFIBrcnosp()[]=#@+-.\\/123456789%HlaegiKLMRTZ"
WIDTH = 64
NAMES = ("score_a", "score_b", "score_c")


def _features(text: str) -> list[float]:
    counts = [0.0] * WIDTH
    for char in text:
        position = VOCABULARY.find(char)
        counts[position if position >= 0 else WIDTH - 1] += 1.0
    return counts


def scores(inputs: list[str]) -> list[dict[str, float]]:
    """The three scores of each input, as records."""
    state = torch.load(CHECKPOINT / "checkpoints" / "net.pt", weights_only=True)
    first_w, first_b = state["0.weight"].double(), state["0.bias"].double()
    second_w, second_b = state["2.weight"].double(), state["2.bias"].double()
    features = torch.tensor([_features(text) for text in inputs], dtype=torch.float64)
    hidden = torch.clamp(features @ first_w.T + first_b, min=0)
    values = hidden @ second_w.T + second_b
    return [dict(zip(NAMES, map(float, row))) for row in values]
