"""FGSM: Fast Gradient Sign Method (Goodfellow et al., 2015), one step; L-inf (sign) or L2 (normalized gradient)."""

from __future__ import annotations

from typing import Any

import torch

from .base import Attack, Context
from .geometry import clip_to_bounds, project, steepest_direction
from .losses import cross_entropy


class FGSM(Attack):
    """One gradient step of size epsilon from the clean input."""

    name = "fgsm"

    def params(self) -> dict[str, Any]:
        return {}

    def perturb(self, ctx: Context, x: torch.Tensor, y: torch.Tensor, eps: float, init: torch.Tensor | None):
        ctx.check()
        delta = torch.zeros_like(x, requires_grad=True)
        logits = ctx.logits(x + delta)
        if ctx.trace is not None:
            ctx.trace.record(None, delta, logits)
        loss = cross_entropy(logits, y)
        (grad,) = torch.autograd.grad(loss.sum(), delta)
        delta = clip_to_bounds(x, project(eps * steepest_direction(grad, self.norm), eps, self.norm), ctx.bounds)
        with torch.no_grad():
            logits = ctx.logits(x + delta)
        if ctx.trace is not None:
            ctx.trace.record(None, delta, logits)
        return delta.detach(), logits.argmax(1) != y
