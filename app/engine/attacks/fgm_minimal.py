"""Minimal FGM, as NIST Dioptra runs it (ART's ``FastGradientMethod(minimal=True)``): per sample, the
smallest epsilon on a grid at which ONE gradient step from the clean input (FGSM's sign for L-inf, the
normalised gradient for L2; Goodfellow, Shlens, Szegedy 2015) is adversarial.

The grid is ``grid-steps`` evenly spaced epsilons up to the request's largest one, together with the
request's own epsilons, so a sample counts as broken at epsilon k exactly when its minimal grid epsilon is at
most epsilon k (the curve is the share of samples whose minimal epsilon exceeds each epsilon). The search
runs once, before the sweep (one gradient and one forward per grid value per batch); its per-sample minimal
epsilons (absolute; inf where no grid value works) become ``min_norm``, which the figures report as the
``minimal-norm`` breaking perturbation. Each step's success is judged as the sweep's (``verify``: fp32, in
bounds), so on a defended model it is the defended prediction.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from .base import Attack, Context, verify
from .geometry import Bounds, clip_to_bounds, lp_norm, project, steepest_direction
from .losses import cross_entropy
from .minimal import search_minimal_norms
from .state import Hooks, Source, SweepState


def grid(epsilons: list[float], steps: int) -> list[float]:
    """The epsilons tried, ascending: ``steps`` evenly spaced up to the largest, plus the request's own (0 left out)."""
    top = float(max(epsilons))
    values = {top * i / steps for i in range(1, steps + 1)} | {float(e) for e in epsilons}
    return sorted(v for v in values if v > 0)


@torch.no_grad()
def _first_success(model: nn.Module, x, y, direction, values: list[float], bounds: Bounds, norm: str):
    """Per sample, the smallest of ``values`` whose step ``value * direction`` is adversarial (inf: none), and that step."""
    found = torch.full((len(x),), float("inf"), device=x.device)
    best = torch.zeros_like(x)
    for eps in values:
        open_ = ~torch.isfinite(found)
        if not bool(open_.any()):
            break
        idx = open_.nonzero().squeeze(1)
        delta = clip_to_bounds(x[idx], project(eps * direction[idx], eps, norm), bounds)
        ok = verify(model, x[idx], y[idx], delta, eps, bounds, norm)
        found[idx[ok]] = eps
        best[idx[ok]] = delta[ok]
    return found, best


class FGMMinimal(Attack):
    name = "fgm-minimal"
    prepare_weight = 1

    def __init__(self, *, norm: str = "linf", grid_steps: int = 20, **kwargs: Any) -> None:
        super().__init__(norm=norm, **kwargs)
        self.grid_steps = int(grid_steps)

    def params(self) -> dict[str, Any]:
        return {"grid_steps": self.grid_steps}

    def direction(self, ctx: Context, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The one step's direction: the steepest ascent of the cross-entropy at the clean input (unit norm)."""
        xg = x.clone().requires_grad_(True)
        loss = cross_entropy(ctx.logits(xg), y)
        (grad,) = torch.autograd.grad(loss.sum(), xg)
        return steepest_direction(grad, self.norm).detach()

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
        """The grid search, once for every sample left standing by the clean pass."""
        values = grid(epsilons, self.grid_steps)

        def search(ctx: Context, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            ctx.check()
            found, best = _first_success(model, x, y, self.direction(ctx, x, y), values, bounds, self.norm)
            return best, found

        search_minimal_norms(
            self, search, model=model, source=source, epsilons=epsilons, bounds=bounds, state=state, hooks=hooks, device=device
        )

    def perturb(self, ctx: Context, x: torch.Tensor, y: torch.Tensor, eps: float, init: torch.Tensor | None):
        """The grid step when it fits in this ball; else (outside a sweep, or above the minimal epsilon) FGM at ``eps``."""
        anchor = ctx.extra.get("anchor")
        if anchor is not None:
            norms = lp_norm(anchor, self.norm)
            fits = (norms > 0) & (norms <= eps * (1 + 1e-6))
            if bool(fits.all()):
                return anchor, fits
        step = clip_to_bounds(x, project(eps * self.direction(ctx, x, y), eps, self.norm), ctx.bounds)
        with torch.no_grad():
            claimed = ctx.logits(x + step).argmax(1) != y
        if anchor is not None:
            step = torch.where(fits.view(-1, *([1] * (x.dim() - 1))), anchor, step)
            claimed = claimed | fits
        return step, claimed
