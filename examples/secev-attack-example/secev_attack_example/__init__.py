"""MI-FGSM as a secev attack plugin (the example of ``examples/secev-attack-example``).

Momentum Iterative FGSM: Dong, Liao, Pang, Su, Zhu, Hu, Li, "Boosting Adversarial Attacks with
Momentum", CVPR 2018 (https://arxiv.org/abs/1710.06081). ``steps`` steps of size epsilon / steps;
the gradient, normalized by its L1 norm, accumulates into a momentum ``g = decay * g + grad / |grad|_1``
and each step follows the momentum's steepest direction: its sign for the L-inf norm, the momentum
normalized to unit L2 norm for L2. Starts from the clean input (no random start).

A plugin implements ``perturb`` (one epsilon, one batch); the service's sweep does the rest (the
epsilons from the largest down, warm starts, checkpoints, the fp32 re-check of every counted
adversarial, the reliability checks, the reports).
"""

from __future__ import annotations

from typing import Any

import torch

from app.attack_catalog import Attack as CatalogEntry
from app.attack_catalog import Param
from app.engine.attacks import Attack, Context
from app.engine.attacks.geometry import clip_to_bounds, project, steepest_direction
from app.engine.attacks.losses import cross_entropy


class MIFGSM(Attack):
    """Momentum iterative FGSM (L-inf or L2), ``steps`` steps of epsilon / steps."""

    name = "mi-fgsm"
    # What GET /api/attacks shows and what requests are validated against (names as the API spells them).
    catalog = CatalogEntry(
        "mi-fgsm",
        "Momentum Iterative FGSM",
        "max-norm",
        "Iterative FGSM whose steps follow a momentum of L1-normalized gradients (decay), steps of epsilon / steps "
        "from the clean input.",
        {"title": "Boosting Adversarial Attacks with Momentum", "authors": "Dong, Liao, Pang, Su, Zhu, Hu, Li",
         "venue": "CVPR 2018", "url": "https://arxiv.org/abs/1710.06081"},
        (
            Param("steps", "integer", 10, "iterations, each of size epsilon / steps", 1, 1000),
            Param("decay", "number", 1.0, "momentum decay factor mu (the paper's default: 1.0)", 0, 10),
        ),
    )

    def __init__(self, *, steps: int = 10, decay: float = 1.0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.steps, self.decay = steps, decay

    def params(self) -> dict[str, Any]:
        return {"steps": self.steps, "decay": self.decay}

    def perturb(self, ctx: Context, x: torch.Tensor, y: torch.Tensor, eps: float, init: torch.Tensor | None):
        alpha = eps / self.steps
        delta = torch.zeros_like(x)
        momentum = torch.zeros_like(x)
        found = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        out = torch.zeros_like(x)
        for _ in range(self.steps):
            ctx.check()  # counts the step, and stops a canceled job within one step
            delta.requires_grad_(True)
            logits = ctx.logits(x + delta)
            (grad,) = torch.autograd.grad(cross_entropy(logits, y).sum(), delta)
            adv = (logits.argmax(1) != y) & ~found
            out[adv] = delta.detach()[adv]  # a sample keeps its first adversarial
            found |= adv
            l1 = grad.abs().flatten(1).sum(1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
            momentum = self.decay * momentum + grad / l1
            step = delta.detach() + alpha * steepest_direction(momentum, self.norm)
            delta = clip_to_bounds(x, project(step, eps, self.norm), ctx.bounds)
        with torch.no_grad():
            adv = (ctx.logits(x + delta).argmax(1) != y) & ~found
        out[~found] = delta[~found]
        return out, found | adv
