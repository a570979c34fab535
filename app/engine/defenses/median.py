"""Median smoothing, one of the feature squeezers of Xu, Evans, Qi, "Feature Squeezing: Detecting Adversarial
Examples in Deep Neural Networks" (NDSS 2018).

Forward: the real median over each ``window`` x ``window`` square, per channel, edges reflected (repeated
where the image is smaller than half a window). Backward (BPDA, Athalye et al. 2018): the gradient of the
mean over the same window, a smooth approximation with the same low-pass effect; the median's own gradient
reaches one pixel per window and the identity ignores the smoothing.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .bpda import Stage, smooth_through


class MedianSmoothing(Stage):
    name = "spatial-smoothing"

    def __init__(self, bounds: tuple[float, float], layout: str = "nchw", *, window: int = 3) -> None:
        super().__init__(bounds, layout)
        self.window = int(window)

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        img = self.images(x)
        k, pad = self.window, self.window // 2
        mode = "reflect" if pad < min(img.shape[-2:]) else "replicate"
        padded = F.pad(img, (pad, pad, pad, pad), mode=mode)
        with torch.no_grad():
            windows = padded.detach().unfold(2, k, 1).unfold(3, k, 1)  # N, C, H, W, k, k
            real = windows.reshape(*windows.shape[:4], k * k).median(-1).values
        approx = F.avg_pool2d(padded, k, stride=1)
        return self.back(smooth_through(approx, real.to(approx.dtype)))
