"""Random noise of size epsilon: the baseline of ``perturbation-type: random`` (L-inf: random signs; L2: random direction).

Not an attack: it shows how much accuracy falls under perturbations an
attacker did not choose, to set against the attacked curve.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import Attack, Context
from .geometry import clip_to_bounds, random_on_sphere


class Noise(Attack):
    name = "noise"

    def __init__(self, *, norm: str = "linf", restarts: int = 1, **kwargs: Any) -> None:
        super().__init__(norm=norm, **kwargs)
        self.restarts = restarts

    def params(self) -> dict[str, Any]:
        return {"restarts": self.restarts}

    @torch.no_grad()
    def perturb(self, ctx: Context, x: torch.Tensor, y: torch.Tensor, eps: float, init: torch.Tensor | None):
        best = torch.zeros_like(x)
        success = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        for _ in range(self.restarts):
            ctx.check()
            delta = clip_to_bounds(x, random_on_sphere(x, eps, self.norm, ctx.generator), ctx.bounds)
            logits = ctx.logits(x + delta)
            if ctx.trace is not None:
                ctx.trace.record(None, delta, logits)
            adv = (logits.argmax(1) != y) & ~success
            best[~success] = delta[~success]  # an adversarial draw, or the latest one while none was
            success |= adv
        return best, success
