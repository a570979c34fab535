"""Models built to mask gradients, exported to real ONNX files: the reliability checks must flag them.

- ``rounding_cnn``: the digits CNN behind an input quantizer inside the graph (ONNX ``Round``: the
  input is rounded to ``levels`` grey levels), so every input gradient is exactly zero;
- ``saturated_cnn``: the digits CNN whose logits are multiplied by 1000 before a final ``Softmax``,
  so its probabilities are 0 or 1 in float32 and the loss is flat around almost every sample.
Both are trained as well as the plain CNN: only their gradients are broken.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from app.engine.assets import digits, digits_cnn, export_onnx, train


class Quantize(nn.Module):
    """Round the input to ``levels`` evenly spaced values in [0, 1] (exported as ONNX Round)."""

    def __init__(self, levels: int = 4) -> None:
        super().__init__()
        self.steps = float(levels - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.round(x * self.steps) / self.steps


class Scale(nn.Module):
    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.factor


def _data() -> tuple[np.ndarray, np.ndarray]:
    xtr, ytr, _, _ = digits()
    return xtr, ytr


def rounding_cnn(path: Path, levels: int = 4) -> Path:
    """A digits CNN trained on, and evaluated behind, inputs rounded to ``levels`` levels inside the graph."""
    xtr, ytr = _data()
    model = nn.Sequential(Quantize(levels), *digits_cnn(softmax=True))
    train(model, xtr, ytr, epochs=6)
    return export_onnx(model, (1, 8, 8), path)


def saturated_cnn(path: Path, factor: float = 1000.0) -> Path:
    """A digits CNN whose logits are multiplied by ``factor`` before its final Softmax."""
    xtr, ytr = _data()
    net = train(digits_cnn(softmax=False), xtr, ytr, epochs=4)
    return export_onnx(nn.Sequential(net, Scale(factor), nn.Softmax(dim=1)), (1, 8, 8), path)
