"""Gaussian noise in front of the model, as NIST Dioptra's Gaussian augmentation defense and the randomized
smoothing of Cohen, Rosenfeld, Kolter, "Certified Adversarial Robustness via Randomized Smoothing" (ICML 2019).

Forward: ``clip(x + sigma * (upper - lower) * n)`` with ``n`` standard normal, drawn by the caller
(``Defended``): fresh per sample for each expectation-over-transformation draw of an attack step (Athalye,
Carlini, Wagner 2018; Athalye, Engstrom, Ilyas, Kwok 2018), or one of the seeded patterns a majority
prediction votes over. Differentiable: the gradient passes where the clip does not bind.
"""

from __future__ import annotations

import torch

from .bpda import Stage


class GaussianNoise(Stage):
    name = "gaussian-noise"
    random = True

    def __init__(self, bounds: tuple[float, float], layout: str = "nchw", *, sigma: float = 0.1) -> None:
        super().__init__(bounds, layout)
        self.sigma = float(sigma)

    def forward(self, x: torch.Tensor, noise: torch.Tensor | None = None) -> torch.Tensor:
        if noise is None:
            raise ValueError("gaussian-noise needs its noise draw")
        return (x + self.sigma * (self.ub - self.lb) * noise.to(x.dtype)).clamp(self.lb, self.ub)
