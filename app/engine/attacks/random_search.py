"""Random search on the L2 sphere (the random-search scheme of Andriushchenko et al., "Square Attack",
ECCV 2020, with Gaussian proposals as in Rastrigin's 1963 random search); L2 only, gradient-free.

It uses the model's scores only, never a gradient, so gradient masking does not blind it. Start
from a random point of the sphere of radius epsilon; each step adds a random direction scaled by a
step (a share of epsilon that halves on the Square attack's schedule), puts the point back on the
sphere and inside the input bounds, and keeps it for the samples whose margin loss (true score
minus the best other score) went down. Used by the reliability check ``gradient-free-attack``.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import Attack, Context
from .geometry import batch_view, clip_to_bounds, lp_norm, random_on_sphere
from .losses import margin
from .square import p_schedule


class RandomSearch(Attack):
    name = "random-search"

    def __init__(self, *, norm: str = "l2", queries: int = 300, step: float = 0.5, **kwargs: Any) -> None:
        if norm != "l2":
            raise ValueError("this random search is the L2 one; use Square for L-inf")
        super().__init__(norm=norm, **kwargs)
        self.queries, self.step = queries, step

    def params(self) -> dict[str, Any]:
        return {"queries": self.queries, "step": self.step}

    @torch.no_grad()
    def perturb(self, ctx: Context, x: torch.Tensor, y: torch.Tensor, eps: float, init: torch.Tensor | None):
        g = ctx.generator
        delta = clip_to_bounds(x, random_on_sphere(x, eps, "l2", g), ctx.bounds)
        loss = -margin(ctx.logits(x + delta), y)  # positive while the sample is classified correctly
        for i in range(self.queries):
            ctx.check()
            active = loss >= 0
            if not bool(active.any()):
                break
            size = p_schedule(self.step, i, self.queries) * eps
            candidate = delta + random_on_sphere(x, size, "l2", g)
            candidate = candidate * batch_view(eps / lp_norm(candidate, "l2").clamp_min(1e-12), x)
            candidate = clip_to_bounds(x, candidate, ctx.bounds)
            new_loss = -margin(ctx.logits(x + candidate), y)
            better = active & (new_loss < loss)
            delta = torch.where(batch_view(better, x), candidate, delta)
            loss = torch.where(better, new_loss, loss)
        return delta, loss < 0
