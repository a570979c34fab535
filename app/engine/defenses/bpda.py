"""Backward Pass Differentiable Approximation (BPDA; Athalye, Carlini, Wagner, "Obfuscated Gradients Give a
False Sense of Security", ICML 2018), and the shapes every stage shares.

A non-differentiable stage (JPEG, bit-depth rounding) runs its real transform forward and hands the attack
the identity's gradient backward (``straight_through``), written ``x + (real - x).detach()``: the value is
exactly ``real``, the gradient passes unchanged.
"""

from __future__ import annotations

import torch
from torch import nn

from ...exceptions import EvaluationError


def straight_through(x: torch.Tensor, real: torch.Tensor) -> torch.Tensor:
    """``real`` forward, the identity backward."""
    return x + (real - x).detach()


class Stage(nn.Module):
    """One preprocessing defense in input space: ``bounds`` the input range, ``layout`` nchw or nhwc.
    ``random`` stages take a standard-normal ``noise`` tensor broadcastable to the input."""

    name = "stage"
    random = False

    def __init__(self, bounds: tuple[float, float], layout: str = "nchw") -> None:
        super().__init__()
        self.lb, self.ub = float(bounds[0]), float(bounds[1])
        self.layout = layout

    def images(self, x: torch.Tensor) -> torch.Tensor:
        """The batch as N x C x H x W (a spatial defense needs images)."""
        if x.dim() != 4:
            raise EvaluationError(
                f"defense {self.name} needs images (N x C x H x W or N x H x W x C), got inputs of shape {list(x.shape)}",
                details={"field": "defenses"},
            )
        return x.permute(0, 3, 1, 2) if self.layout == "nhwc" else x

    def back(self, x: torch.Tensor) -> torch.Tensor:
        """N x C x H x W back to the model's layout."""
        return x.permute(0, 2, 3, 1) if self.layout == "nhwc" else x
