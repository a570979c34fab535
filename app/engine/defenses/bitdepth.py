"""Bit-depth reduction, one of the feature squeezers of Xu, Evans, Qi, "Feature Squeezing: Detecting
Adversarial Examples in Deep Neural Networks" (NDSS 2018).

Forward: every value rounded to the nearest of ``2 ** bits`` evenly spaced levels between the input bounds.
Backward (BPDA, Athalye et al. 2018): the identity, since the rounding's own gradient is zero almost everywhere.
"""

from __future__ import annotations

import torch

from .bpda import Stage, straight_through


class BitDepth(Stage):
    name = "bit-depth"

    def __init__(self, bounds: tuple[float, float], layout: str = "nchw", *, bits: int = 4) -> None:
        super().__init__(bounds, layout)
        self.bits = int(bits)

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        levels = 2**self.bits - 1
        span = self.ub - self.lb
        with torch.no_grad():
            real = ((x - self.lb) / span).clamp(0, 1).mul(levels).round().div(levels).mul(span).add(self.lb)
        return straight_through(x, real)
