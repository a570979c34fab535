"""Median smoothing, one of the feature squeezers of Xu, Evans, Qi, "Feature Squeezing: Detecting Adversarial
Examples in Deep Neural Networks" (NDSS 2018).

The real median over each ``window`` x ``window`` square, per channel, edges reflected (repeated where the
image is smaller than half a window). The median is piecewise linear, so it needs no BPDA (Athalye, Carlini,
Wagner 2018 treat it as differentiable): the attack follows its own gradient, which reaches the selected
pixel of each window. Measured on the test CNN (digits, window 3, PGD 20 steps, 120 samples), it is the
strongest of the three backward passes tried: defended accuracy at 0.1 / 0.2 of the range 0.25 / 0.025
with it, 0.32 / 0.058 with the gradient of a mean filter (the gradient-free check then warned), and
0.38 / 0.092 with the identity (BPDA straight through; it warned too).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .bpda import Stage


class MedianSmoothing(Stage):
    name = "spatial-smoothing"

    def __init__(self, bounds: tuple[float, float], layout: str = "nchw", *, window: int = 3) -> None:
        super().__init__(bounds, layout)
        self.window = int(window)

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        img = self.images(x)
        k, pad = self.window, self.window // 2
        mode = "reflect" if pad < min(img.shape[-2:]) else "replicate"
        windows = F.pad(img, (pad, pad, pad, pad), mode=mode).unfold(2, k, 1).unfold(3, k, 1)  # N, C, H, W, k, k
        return self.back(windows.reshape(*windows.shape[:4], k * k).median(-1).values)
