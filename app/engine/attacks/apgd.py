"""APGD: Auto-PGD (Croce & Hein, "Reliable evaluation of adversarial robustness
with an ensemble of diverse parameter-free attacks", ICML 2020); L-inf or L2.

The step size starts at 2 epsilon and halves at checkpoints where the loss
stopped improving, restarting from the best point; steps use momentum 0.75.
Losses: cross-entropy, DLR, or targeted DLR over the top ``n_target_classes``
wrong classes (run side by side, as many targets as fit in a batch); the
default runs cross-entropy, then targeted DLR on what is left (AutoAttack's
first two attacks).
"""

from __future__ import annotations

from typing import Any

import torch

from .base import Attack, Best, Context, is_warm
from .geometry import batch_view, clip_to_bounds, project, random_in_ball, steepest_direction
from .losses import LOSSES

RHO = 0.75
MOMENTUM = 0.75


def checkpoints(steps: int) -> list[int]:
    """The iterations where APGD checks progress: p_0=0, p_1=0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06),
    in the reference implementation's integer arithmetic (so 100 steps give 22, 41, 57, ...)."""
    length, shortest, shrink = max(int(0.22 * steps), 1), max(int(0.06 * steps), 1), max(int(0.03 * steps), 1)
    out, at = [], length
    while at <= steps:
        out.append(at)
        length = max(length - shrink, shortest)
        at += length
    return out


class APGD(Attack):
    name = "apgd"

    def __init__(
        self,
        *,
        norm: str = "linf",
        steps: int = 100,
        restarts: int = 1,
        loss: str = "ce+dlr-targeted",
        n_target_classes: int = 9,
        first_target: int = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(norm=norm, **kwargs)
        if any(part not in LOSSES for part in loss.split("+")):
            raise ValueError(f"loss must be one of {sorted(LOSSES)}, or several joined by '+'")
        self.steps, self.restarts, self.loss, self.n_target_classes = steps, restarts, loss, n_target_classes
        self.first_target = first_target  # targeted DLR skips the classes ranked above this one (``auto`` runs them already)

    def params(self) -> dict[str, Any]:
        out: dict[str, Any] = {"steps": self.steps, "restarts": self.restarts, "loss": self.loss}
        if "dlr-targeted" in self.loss:
            out["n_target_classes"] = self.n_target_classes
        return out

    def perturb(self, ctx: Context, x: torch.Tensor, y: torch.Tensor, eps: float, init: torch.Tensor | None):
        best = Best(init if init is not None else torch.zeros_like(x))
        with torch.no_grad():
            clean_logits = ctx.logits(x)
        for i, loss_name in enumerate(self.loss.split("+")):
            # Only the first loss starts from the warm start: the later ones start from random points, as
            # AutoAttack's do, so a warm start that leads nowhere is not followed by every loss.
            self.stage(ctx, x, y, eps, init if i == 0 else None, best, loss_name, clean_logits)
        return best.delta, best.success

    def stage(self, ctx: Context, x, y, eps: float, init, best: Best, loss_name: str, clean_logits: torch.Tensor) -> None:
        """One loss: restarts (and, for targeted DLR, one run per target) on the samples still standing.

        Targets run side by side, as many as fit in one batch (each standing sample once per target),
        so a handful of samples left standing costs one batch per step for all their targets, not one
        small batch per target; a sample leaves every run the step any of its targets breaks it."""
        n_classes = clean_logits.shape[1]
        targets: list[torch.Tensor | None] = [None]
        if loss_name == "dlr-targeted" and n_classes < 4 or loss_name == "dlr" and n_classes < 3:
            loss_name = "ce"  # DLR's denominator needs that many classes
        elif loss_name == "dlr-targeted":
            ranked = clean_logits.scatter(1, y[:, None], float("-inf")).argsort(1, descending=True)
            targets = [ranked[:, t] for t in range(self.first_target, min(self.n_target_classes, n_classes - 1))]
        loss_fn = LOSSES[loss_name]
        done = 0
        while done < len(targets):
            standing = best.standing()
            if len(standing) == 0:
                return
            group = targets[done : done + max(1, self.batch_size // len(standing))]
            done += len(group)
            for restart in range(self.restarts):
                idx = best.standing()
                if len(idx) == 0:
                    return
                rows = idx.repeat(len(group))
                if restart == 0 and is_warm(init):
                    start = best.delta[rows]
                else:
                    start = random_in_ball(x[rows], eps, self.norm, ctx.generator)
                delta = clip_to_bounds(x[rows], project(start, eps, self.norm), ctx.bounds)
                tgt = None if group[0] is None else torch.cat([target[idx] for target in group])
                self.run(ctx, x[rows], y[rows], tgt, eps, rows, delta, best, loss_fn)

    def run(
        self,
        ctx: Context,
        x: torch.Tensor,
        y: torch.Tensor,
        target: torch.Tensor | None,
        eps: float,
        idx: torch.Tensor,
        delta: torch.Tensor,
        best: Best,
        loss_fn,
    ) -> None:
        checks = set(checkpoints(self.steps))
        n = len(idx)
        dev = x.device
        step = torch.full((n,), 2.0 * eps, device=dev)
        run_best_loss = torch.full((n,), float("-inf"), device=dev)
        run_best = delta.clone()
        run_best_grad = torch.zeros_like(delta)
        loss_at_check = run_best_loss.clone()
        reduced_at_check = torch.zeros(n, dtype=torch.bool, device=dev)
        increases = torch.zeros(n, device=dev)
        prev_loss = torch.full((n,), float("-inf"), device=dev)
        prev_delta = delta.clone()
        last_check = 0

        def project_step(d: torch.Tensor, xs: torch.Tensor) -> torch.Tensor:
            return clip_to_bounds(xs, project(d, eps, self.norm), ctx.bounds)

        for it in range(self.steps + 1):
            ctx.check()
            delta.requires_grad_(True)
            logits = ctx.logits(x + delta)
            if ctx.trace is not None:
                ctx.trace.record(idx, delta, logits)
            loss = loss_fn(logits, y, target)
            adv = logits.argmax(1) != y
            best.update(idx, delta, loss.detach(), adv)
            if it == self.steps:
                return
            (grad,) = torch.autograd.grad(loss.sum(), delta)
            delta, loss = delta.detach(), loss.detach()
            keep = ~best.success[idx]  # also drops the other targets' rows of a sample one target broke
            if not bool(keep.any()):
                return
            if not bool(keep.all()):
                idx, x, y, delta, grad, loss = idx[keep], x[keep], y[keep], delta[keep], grad[keep], loss[keep]
                target = None if target is None else target[keep]
                step, run_best_loss, run_best = step[keep], run_best_loss[keep], run_best[keep]
                run_best_grad = run_best_grad[keep]
                loss_at_check, reduced_at_check, increases = loss_at_check[keep], reduced_at_check[keep], increases[keep]
                prev_loss, prev_delta = prev_loss[keep], prev_delta[keep]
            increases += (loss > prev_loss).float()
            improved = loss > run_best_loss
            run_best = torch.where(batch_view(improved, delta), delta, run_best)
            run_best_grad = torch.where(batch_view(improved, delta), grad, run_best_grad)
            run_best_loss = torch.where(improved, loss, run_best_loss)
            if it in checks and it > 0:
                stalled = increases < RHO * (it - last_check)
                flat = ~reduced_at_check & (loss_at_check >= run_best_loss)
                reduce = stalled | flat
                step = torch.where(reduce, step / 2, step)
                if bool(reduce.any()):
                    # Halved samples go back to their best point, with its gradient and no momentum.
                    back = batch_view(reduce, delta)
                    delta = torch.where(back, run_best, delta)
                    grad = torch.where(back, run_best_grad, grad)
                    prev_delta = torch.where(back, run_best, prev_delta)
                reduced_at_check, loss_at_check = reduce, run_best_loss.clone()
                increases.zero_()
                last_check = it
            z = project_step(delta + batch_view(step, delta) * steepest_direction(grad, self.norm), x)
            alpha = 1.0 if it == 0 else MOMENTUM
            new = project_step(delta + alpha * (z - delta) + (1 - alpha) * (delta - prev_delta), x)
            prev_delta, prev_loss, delta = delta, loss, new
