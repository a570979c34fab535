"""FMN: Fast Minimum-Norm attack (Pintor et al., "Fast Minimum-norm Adversarial
Attacks through Adaptive Norm Constraints", NeurIPS 2021); L-inf or L2.

One run finds each sample's smallest successful perturbation, so robust
accuracy at any epsilon is the share of samples whose minimal norm exceeds it:
the whole curve for the cost of one attack. The norm constraint shrinks by
``gamma`` while the point is adversarial and grows (or jumps to a linear
estimate of the boundary) while it is not; steps and gamma anneal by cosine.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .base import Attack, Bounds, Context
from .geometry import batch_view, clip_to_bounds, lp_norm, project, steepest_direction
from .losses import margin
from .minimal import search_minimal_norms
from .state import Hooks, Source, SweepState

DUAL = {"linf": 1, "l2": 2}


def minimal_norm(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    norm: str,
    bounds: Bounds,
    steps: int = 200,
    step_size: float = 1.0,
    gamma: float = 0.05,
    logits=None,
    check: Callable[[], None] | None = None,
    trace=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per sample: the smallest adversarial perturbation found and its norm (inf when none);
    ``check`` is called every step (it raises to cancel); ``trace`` (a ``trace.Trace``) records each step's point."""
    forward = logits or model
    lb, ub = bounds
    n = len(x)
    worst = lp_norm(torch.maximum(x - lb, ub - x), norm)
    delta = torch.zeros_like(x)
    eps = torch.full((n,), float("inf"), device=x.device)
    best_norm = torch.full((n,), float("inf"), device=x.device)
    best = torch.zeros_like(x)
    found = torch.zeros(n, dtype=torch.bool, device=x.device)
    alpha_final, gamma_final = step_size / 100, gamma / 50
    for i in range(steps + 1):
        if check is not None:
            check()
        delta.requires_grad_(True)
        out = forward(x + delta)
        if trace is not None:
            trace.record(None, delta, out)
        m = margin(out, y)
        adv = out.argmax(1) != y
        dnorm = lp_norm(delta.detach(), norm)
        smaller = adv & (dnorm < best_norm)
        best_norm = torch.where(smaller, dnorm, best_norm)
        best = torch.where(batch_view(smaller, x), delta.detach(), best)
        if i == steps:
            break
        (grad,) = torch.autograd.grad(m.sum(), delta)
        delta = delta.detach()
        found |= adv
        cosine = (1 + math.cos(math.pi * i / steps)) / 2
        alpha = alpha_final + (step_size - alpha_final) * cosine
        g = gamma_final + (gamma - gamma_final) * cosine
        dual = grad.flatten(1).norm(p=DUAL[norm], dim=1).clamp_min(1e-12)
        to_boundary = m.detach().abs() / dual
        eps = torch.where(
            adv,
            torch.minimum(eps * (1 - g), best_norm),
            torch.where(found, eps * (1 + g), (dnorm + to_boundary) * (1 + g)),
        )
        eps = torch.minimum(eps, worst)
        delta = delta + batch_view(alpha * eps, x) * steepest_direction(grad, norm)
        delta = clip_to_bounds(x, project(delta, eps, norm), bounds)
    return best, best_norm


class FMN(Attack):
    name = "fmn"
    prepare_weight = 1

    def __init__(
        self, *, norm: str = "linf", steps: int = 200, step_size: float = 1.0, gamma: float = 0.05, **kwargs: Any
    ) -> None:
        super().__init__(norm=norm, **kwargs)
        self.steps, self.step_size, self.gamma = steps, step_size, gamma

    def params(self) -> dict[str, Any]:
        return {"steps": self.steps, "step_size": self.step_size, "gamma": self.gamma}

    def prepare(
        self,
        model: nn.Module,
        source: Source,
        epsilons: list[float],
        bounds: Bounds,
        state: SweepState,
        hooks: Hooks,
        device: torch.device,
    ) -> None:
        """Run the minimal-norm search once; the epsilon loop then only checks each threshold."""

        def search(ctx: Context, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            return minimal_norm(
                model,
                x,
                y,
                norm=self.norm,
                bounds=bounds,
                steps=self.steps,
                step_size=self.step_size,
                gamma=self.gamma,
                logits=ctx.logits,
                check=ctx.check,
            )

        search_minimal_norms(
            self, search, model=model, source=source, epsilons=epsilons, bounds=bounds, state=state, hooks=hooks, device=device
        )

    @torch.no_grad()
    def perturb(self, ctx: Context, x: torch.Tensor, y: torch.Tensor, eps: float, init: torch.Tensor | None):
        anchor = ctx.extra["anchor"]
        norms = lp_norm(anchor, self.norm)
        return anchor, (norms > 0) & (norms <= eps)  # a zero anchor means FMN found nothing
