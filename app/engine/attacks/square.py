"""Square attack (Andriushchenko, Croce, Flammarion & Hein, "Square Attack: a query-efficient black-box
adversarial attack via random search", ECCV 2020); L-inf only, gradient-free.

It never looks at a gradient, only at the model's scores, so gradient masking (rounded inputs, a
saturated softmax, non-differentiable layers) does not blind it. Random search: start from vertical
stripes of +-epsilon; each step redraws one square window (its side shrinks on the paper's schedule
of ``p``, the share of the image it covers) to +-epsilon per channel, and keeps the change for the
samples whose margin loss (true score minus the best other score) went down. A sample whose margin
goes negative is misclassified. Used by the reliability check ``gradient-free-attack``.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from .base import Attack, Context
from .geometry import clip_to_bounds
from .losses import margin

# The paper's schedule, written for 10,000 queries: p halves after these fractions of the budget.
HALVINGS = (0.001, 0.005, 0.02, 0.05, 0.1, 0.2, 0.4, 0.6, 0.8)


def p_schedule(p_init: float, step: int, queries: int) -> float:
    """The share of the image the square covers at ``step`` of ``queries``."""
    done = step / max(1, queries)
    return p_init / 2 ** sum(done > h for h in HALVINGS)


def as_images(x: torch.Tensor, channels_last: bool) -> torch.Tensor:
    """A view of the batch as N x C x H x W (channels-last inputs permuted; anything else is one row of pixels)."""
    if x.dim() == 4:
        return x.permute(0, 3, 1, 2) if channels_last else x
    return x.reshape(len(x), 1, 1, -1)


class Square(Attack):
    name = "square"

    def __init__(
        self, *, norm: str = "linf", queries: int = 300, p_init: float = 0.05, channels_last: bool = False, **kwargs: Any
    ) -> None:
        if norm != "linf":
            raise ValueError("the Square attack here is the L-inf one; use RandomSearch for L2")
        super().__init__(norm=norm, **kwargs)
        self.queries, self.p_init, self.channels_last = queries, p_init, channels_last

    def params(self) -> dict[str, Any]:
        return {"queries": self.queries, "p_init": self.p_init}

    @torch.no_grad()
    def perturb(self, ctx: Context, x: torch.Tensor, y: torch.Tensor, eps: float, init: torch.Tensor | None):
        g = ctx.generator
        img = as_images(x, self.channels_last)
        n, c, h, w = img.shape
        signs = torch.randint(0, 2, (n, c, 1, w), generator=g, device=x.device).to(x.dtype) * 2 - 1
        delta = self._back(img, (eps * signs).expand(n, c, h, w), x)
        delta = clip_to_bounds(x, delta, ctx.bounds)
        loss = -margin(ctx.logits(x + delta), y)  # positive while the sample is classified correctly
        rows = torch.arange(h, device=x.device).view(1, 1, h, 1)
        cols = torch.arange(w, device=x.device).view(1, 1, 1, w)
        for step in range(self.queries):
            ctx.check()
            active = loss >= 0
            if not bool(active.any()):
                break
            side = max(1, min(h, w, round(math.sqrt(p_schedule(self.p_init, step, self.queries) * h * w))))
            top = torch.randint(0, h - side + 1, (n, 1, 1, 1), generator=g, device=x.device)
            left = torch.randint(0, w - side + 1, (n, 1, 1, 1), generator=g, device=x.device)
            window = (rows >= top) & (rows < top + side) & (cols >= left) & (cols < left + side)
            fresh = eps * (torch.randint(0, 2, (n, c, 1, 1), generator=g, device=x.device).to(x.dtype) * 2 - 1)
            current = as_images(delta, self.channels_last)
            candidate = clip_to_bounds(x, self._back(img, torch.where(window, fresh, current), x), ctx.bounds)
            new_loss = -margin(ctx.logits(x + candidate), y)
            better = active & (new_loss < loss)
            delta = torch.where(better.view(-1, *([1] * (x.dim() - 1))), candidate, delta)
            loss = torch.where(better, new_loss, loss)
        return delta, loss < 0

    def _back(self, img: torch.Tensor, values: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """``values`` (N x C x H x W) in the layout of ``like``."""
        if like.dim() == 4:
            return values.permute(0, 2, 3, 1).contiguous() if self.channels_last else values.contiguous()
        return values.reshape(like.shape)
