"""PGD: Projected Gradient Descent (Madry et al., 2018); L-inf or L2, with random start and restarts.

Samples leave the batch the step they are broken (checked on the same forward
pass that gives the gradient), so a step costs only what is still standing.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import Attack, Best, Context, clip_to_bounds, is_warm, project, random_in_ball, steepest_direction
from .losses import LOSSES


class PGD(Attack):
    name = "pgd"

    def __init__(
        self,
        *,
        norm: str = "linf",
        steps: int = 50,
        step_size: float = 0.1,
        random_start: bool = True,
        restarts: int = 1,
        loss: str = "ce",
        **kwargs: Any,
    ) -> None:
        super().__init__(norm=norm, **kwargs)
        self.steps, self.step_size, self.random_start, self.restarts = steps, step_size, random_start, restarts
        self.loss = loss
        self.loss_fn = LOSSES[loss]

    def params(self) -> dict[str, Any]:
        return {"steps": self.steps, "step_size": self.step_size, "random_start": self.random_start, "restarts": self.restarts}

    def perturb(self, ctx: Context, x: torch.Tensor, y: torch.Tensor, eps: float, init: torch.Tensor | None):
        best = Best(init if init is not None else torch.zeros_like(x))
        for restart in range(self.restarts):
            idx = best.standing()
            if len(idx) == 0:
                break
            if restart == 0 and is_warm(init):
                start = init[idx]
            elif self.random_start:
                start = random_in_ball(x[idx], eps, self.norm, ctx.generator)
            else:
                start = torch.zeros_like(x[idx])
            delta = clip_to_bounds(x[idx], project(start, eps, self.norm), ctx.bounds)
            self.descend(ctx, x, y, eps, idx, delta, best)
        return best.delta, best.success

    def descend(
        self, ctx: Context, x: torch.Tensor, y: torch.Tensor, eps: float, idx: torch.Tensor, delta: torch.Tensor, best: Best
    ) -> None:
        alpha = self.step_size * eps
        xa, ya = x[idx], y[idx]
        for step in range(self.steps + 1):
            delta.requires_grad_(True)
            logits = ctx.logits(xa + delta)
            loss = self.loss_fn(logits, ya)
            adv = logits.argmax(1) != ya
            best.update(idx, delta, loss.detach(), adv)
            if step == self.steps:
                return
            (grad,) = torch.autograd.grad(loss.sum(), delta)
            keep = ~adv
            if not bool(keep.any()):
                return
            if not bool(keep.all()):
                idx, xa, ya, grad, delta = idx[keep], xa[keep], ya[keep], grad[keep], delta[keep]
            delta = delta.detach() + alpha * steepest_direction(grad, self.norm)
            delta = clip_to_bounds(xa, project(delta, eps, self.norm), ctx.bounds)
