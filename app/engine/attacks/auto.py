"""``auto``: the strongest setting, for users who want one answer; L-inf or L2.

Budget per sample: one FMN run (``fmn_steps``) over the samples correctly
classified, then at each epsilon, for the samples still standing only:
APGD with cross-entropy (``apgd_steps``), then APGD with the targeted DLR loss
against the top ``n_target_classes`` wrong classes (``apgd_steps`` each).
APGD starts from the FMN perturbation projected into the epsilon ball, so a
sample whose minimal norm is within epsilon is broken before any step.
"""

from __future__ import annotations

from typing import Any

import torch

from .apgd import APGD
from .base import Context, project
from .fmn import FMN


class Auto(FMN):
    name = "auto"

    def __init__(
        self, *, norm: str = "linf", fmn_steps: int = 200, apgd_steps: int = 100, n_target_classes: int = 3, **kwargs: Any
    ) -> None:
        super().__init__(norm=norm, steps=fmn_steps, **kwargs)
        self.apgd_steps, self.n_target_classes = apgd_steps, n_target_classes
        self.apgd = APGD(
            norm=norm,
            steps=apgd_steps,
            loss="ce+dlr-targeted",
            n_target_classes=n_target_classes,
            seed=self.seed,
            autocast=self.autocast,
        )

    def params(self) -> dict[str, Any]:
        return {"fmn_steps": self.steps, "apgd_steps": self.apgd_steps, "n_target_classes": self.n_target_classes}

    def perturb(self, ctx: Context, x: torch.Tensor, y: torch.Tensor, eps: float, init: torch.Tensor | None):
        return self.apgd.perturb(ctx, x, y, eps, project(ctx.extra["anchor"], eps, self.norm))
