"""PGD: Projected Gradient Descent (Madry et al., 2018); L-inf or L2, with random start and restarts.

Samples leave the batch the step they are broken (checked on the same forward
pass that gives the gradient) and queued samples take their places, so a step
costs a full batch of useful work.

A warm start (the sweep's adversarial from the next larger epsilon, projected
into this ball) gets a short run of ``WARM_FRACTION`` of the steps; a sample it
does not break then gets the full budget from a fresh random start, as a plain
PGD would. Measured on the digits CNN (5 seeds, 50 steps of 0.25 epsilon), the
warm start alone left 1.0 to 1.2 points more robust accuracy than torchattacks'
PGD at epsilons 0.1 and 0.15: a warm start that fails sits in a region of the
smaller ball that the steps cannot leave, and gets no second chance.
"""

from __future__ import annotations

from typing import Any

import torch

from .base import Attack, Context, is_warm
from .geometry import clip_to_bounds, project, random_in_ball, steepest_direction
from .losses import LOSSES

WARM_FRACTION = 0.2  # of the steps, for the run from a warm start before the fresh one


class PGD(Attack):
    name = "pgd"
    pool_batches = 8  # a perturb call gets up to 8 batches and keeps one batch in flight

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
        found = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        # A sample it breaks gets its adversarial; one that resists, the last point of its last run.
        out = init.clone() if init is not None else torch.zeros_like(x)
        if is_warm(init):
            # Rows of init that are zero (no warm start) get a random start here, and a fresh one below.
            every = torch.arange(len(x), device=x.device)
            self.descend(ctx, x, y, eps, every, init, found, out, max(1, round(WARM_FRACTION * self.steps)))
        for _ in range(self.restarts):
            queue = (~found).nonzero().squeeze(1)
            if len(queue) == 0:
                break
            self.descend(ctx, x, y, eps, queue, None, found, out, self.steps)
        return out, found

    def start(self, ctx: Context, x: torch.Tensor, eps: float, init: torch.Tensor | None) -> torch.Tensor:
        """Warm rows of ``init`` where given, else a random point of the ball (or zero)."""
        if self.random_start:
            s = random_in_ball(x, eps, self.norm, ctx.generator)
        else:
            s = torch.zeros_like(x)
        if init is not None:
            warm = init.flatten(1).abs().amax(1) > 0
            s = torch.where(warm.view(-1, *([1] * (x.dim() - 1))), init, s)
        return clip_to_bounds(x, project(s, eps, self.norm), ctx.bounds)

    def descend(
        self,
        ctx: Context,
        x: torch.Tensor,
        y: torch.Tensor,
        eps: float,
        queue: torch.Tensor,
        init: torch.Tensor | None,
        found: torch.Tensor,
        out: torch.Tensor,
        steps: int,
    ) -> None:
        """``steps`` of PGD over ``queue`` with a pool of at most ``batch_size`` samples: a sample leaves the
        pool the step it is broken (or its steps run out) and the next queued sample takes its place,
        so every forward pass runs on a full batch."""
        alpha = self.step_size * eps
        size = self.batch_size
        idx, pending = queue[:size], queue[size:]
        delta = self.start(ctx, x[idx], eps, None if init is None else init[idx])
        taken = torch.zeros(len(idx), dtype=torch.long, device=x.device)
        while len(idx):
            ctx.check()
            xa, ya = x[idx], y[idx]
            delta.requires_grad_(True)
            logits = ctx.logits(xa + delta)
            if ctx.trace is not None:
                ctx.trace.record(idx, delta, logits)
            loss = self.loss_fn(logits, ya)
            adv = logits.argmax(1) != ya
            keep = ~adv & (taken < steps)
            if bool(keep.any()):
                (grad,) = torch.autograd.grad(loss.sum(), delta)
            delta = delta.detach()
            if bool(adv.any()):
                found[idx[adv]] = True
                out[idx[adv]] = delta[adv]
            spent = ~adv & ~keep  # steps run out: its last point is what the attack returns for it
            if bool(spent.any()):
                out[idx[spent]] = delta[spent].to(out.dtype)
            if bool(keep.any()):
                step = delta[keep] + alpha * steepest_direction(grad[keep], self.norm)
                delta = clip_to_bounds(xa[keep], project(step, eps, self.norm), ctx.bounds)
            else:
                delta = delta[keep]
            idx, taken = idx[keep], taken[keep] + 1
            room = size - len(idx)
            if room > 0 and len(pending):
                fresh, pending = pending[:room], pending[room:]
                start = self.start(ctx, x[fresh], eps, None if init is None else init[fresh])
                idx, delta = torch.cat([idx, fresh]), torch.cat([delta, start])
                taken = torch.cat([taken, torch.zeros(len(fresh), dtype=torch.long, device=x.device)])
