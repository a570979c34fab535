"""The non-adaptive evaluation of a defense: the attack sees only the undefended model, and its
perturbations are transferred to the defended one (``defense-params.adaptive: false``).

It is what a naive evaluation does, and it overstates a defense: compare its curve with the adaptive
one's (Athalye, Carlini, Wagner 2018; Tramer, Carlini, Brendel, Madry, "On Adaptive Attacks to
Adversarial Example Defenses", NeurIPS 2020). The sweep, its warm starts and its fp32 re-check run as
for any attack, with every success judged on the defended model.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from ..attacks.base import Attack, Context


class Transfer(Attack):
    """Runs ``inner``'s one-epsilon step on ``surrogate`` (the undefended model) instead of the attacked one."""

    def __init__(self, inner: Attack, surrogate: nn.Module) -> None:
        super().__init__(norm=inner.norm, seed=inner.seed, batch_size=inner.batch_size, autocast=inner.autocast)
        self.inner, self.surrogate = inner, surrogate
        self.name = f"{inner.name}-transferred"  # not the inner name: the inspection special-cases "fmn"
        self.prepare_weight, self.pool_batches = inner.prepare_weight, inner.pool_batches

    def params(self) -> dict[str, Any]:
        return {**self.inner.params(), "transferred-from": "undefended model"}

    def perturb(self, ctx: Context, x, y, eps, init):
        self.inner.batch_size = self.batch_size
        return self.inner.perturb(
            Context(self.surrogate, ctx.bounds, ctx.generator, ctx.autocast, ctx.extra, ctx.should_stop, ctx.trace),
            x,
            y,
            eps,
            init,
        )

    def prepare(self, model, source, epsilons, bounds, state, hooks, device) -> None:
        self.inner.block, self.inner.offset, self.inner.batch_size = self.block, self.offset, self.batch_size
        self.inner.prepare(self.surrogate, source, epsilons, bounds, state, hooks, device)
