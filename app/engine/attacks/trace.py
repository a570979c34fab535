"""Recording an attack's path, step by step, for the per-sample inspection.

An attack that runs with ``ctx.trace`` set calls ``ctx.trace.record(rows, delta, logits)`` at
each forward pass of its steps (``if ctx.trace is not None``: one attribute check per step when
off, which it is in the sweep). A trace keeps, per sample of the traced batch and per step the
sample took, the cross-entropy of the true class at the step's point, the norm of its perturbation
(the attack's norm) and whether the point is misclassified. Entry 0 is the starting point and
entry i the point after i steps; successive runs (restarts, losses, targets) follow each other.
A sample on several rows of one step (targeted losses run side by side) contributes its
highest-loss row, misclassified if any of its rows is.
"""

from __future__ import annotations

import numpy as np
import torch

from .geometry import lp_norm

MAX_POINTS = 256  # per stored trace: longer paths are thinned to evenly spaced steps (first and last kept)


class Trace:
    """The steps of one traced batch (labels ``y``), shared by the views that :meth:`subset` makes."""

    def __init__(self, y: torch.Tensor, norm: str, rows: torch.Tensor | None = None, steps: list | None = None) -> None:
        self.y, self.norm, self._rows = y, norm, rows
        self.labels = y.cpu().numpy()
        # Per sample: one (loss, distance, misclassified) per step.
        self.steps: list[list[tuple[float, float, bool]]] = steps if steps is not None else [[] for _ in range(len(y))]

    def subset(self, rows: torch.Tensor) -> Trace:
        """The trace of a sub-batch ``x[rows]`` (an attack that runs another on some of its samples)."""
        return Trace(self.y, self.norm, rows if self._rows is None else self._rows[rows], self.steps)

    @torch.no_grad()
    def record(self, rows: torch.Tensor | None, delta: torch.Tensor, logits: torch.Tensor) -> None:
        """One step: ``delta`` and ``logits`` (at ``x[rows] + delta``) for ``rows`` of the batch (None: all, in order)."""
        if rows is None:
            rows = torch.arange(len(delta), device=delta.device)
        if self._rows is not None:
            rows = self._rows.to(rows.device)[rows]
        # The scores are small (rows x classes): the loss is computed here in numpy, one transfer per step
        # (torch's cross_entropy on a few rows costs milliseconds of thread hand-offs on a busy CPU).
        z = logits.detach().float().cpu().numpy().astype(np.float64)
        r = rows.cpu().numpy()
        y = self.labels[r]
        top = z.max(1)
        lo = top + np.log(np.exp(z - top[:, None]).sum(1)) - z[np.arange(len(r)), y]
        wr = z.argmax(1) != y
        di = lp_norm(delta.detach().float(), self.norm).cpu().numpy()
        hit = np.zeros(len(self.steps), dtype=bool)
        np.logical_or.at(hit, r, wr)
        order = np.lexsort((lo, r))  # by sample, then loss: each sample's last entry is its highest-loss row
        last = order[np.r_[r[order][1:] != r[order][:-1], True]]
        for i in last:
            self.steps[r[i]].append((float(lo[i]), float(di[i]), bool(hit[r[i]])))

    def summary(self, i: int, eps: float, returned_adversarial: bool) -> dict:
        """Sample ``i``'s trace as stored: ``loss`` and ``distance`` per step, whether a point of the
        path inside the ``eps`` ball was misclassified, and whether the returned point is."""
        steps = self.steps[i]
        tol = 1e-5 * max(1.0, eps)
        on_path = any(wrong and dist <= eps + tol for _, dist, wrong in steps)
        out = {
            "loss": [_round(loss) for loss, _, _ in steps],
            "distance": [_round(dist) for _, dist, _ in steps],
            "adversarial-on-path": on_path,
            "returned-adversarial": bool(returned_adversarial),
        }
        if len(steps) > MAX_POINTS:
            keep = np.unique(np.linspace(0, len(steps) - 1, MAX_POINTS).round().astype(int))
            out["loss"] = [out["loss"][j] for j in keep]
            out["distance"] = [out["distance"][j] for j in keep]
            out["steps"] = len(steps)
            out["kept-steps"] = keep.tolist()
        return out


def _round(value: float) -> float | None:
    """Six significant digits (the JSON stays small); a non-finite loss is ``null`` (JSON has no infinity)."""
    return float(f"{value:.6g}") if np.isfinite(value) else None
