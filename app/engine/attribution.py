"""Attribution maps with captum: which input pixels a prediction rests on.

Integrated Gradients (Sundararajan et al., 2017): the input gradient of the predicted class's
logit, integrated along the straight line from a black image (the lower input bound) to the
input, times the difference. It satisfies completeness (the map sums to the logit's change from
the baseline), where a plain gradient (saliency) shows only local sensitivity and is noisy on
ReLU networks. ``STEPS`` points of the path (Gauss-Legendre) cost ``STEPS`` forward and backward
passes per image; the inspection draws at most 32 samples, so this stays bounded.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

STEPS = 16
METHOD = {
    "method": "integrated-gradients",
    "library": "captum",
    "steps": STEPS,
    "baseline": "lower input bound",
    "target": "predicted class",
}


def integrated_gradients(
    model: nn.Module, x: torch.Tensor, target: torch.Tensor, lower: float, batch_size: int, check: Callable[[], None]
) -> np.ndarray:
    """Attributions shaped like ``x``, for class ``target`` of each row; ``check`` is called between
    chunks (it raises to cancel)."""
    from captum.attr import IntegratedGradients

    ig = IntegratedGradients(model)
    chunk = max(1, batch_size // STEPS)
    out = []
    for start in range(0, len(x), chunk):
        check()
        xs = x[start : start + chunk].detach().float()
        attr = ig.attribute(
            xs,
            baselines=torch.full_like(xs, lower),
            target=target[start : start + chunk],
            n_steps=STEPS,
            internal_batch_size=batch_size,
        )
        out.append(attr.detach().float().cpu().numpy())
    return np.concatenate(out)


def warm_up() -> None:
    """Import captum and matplotlib's colour maps (seconds, paid once in a worker's parent process, not per job)."""
    import captum.attr  # noqa: F401
    from matplotlib import colormaps  # noqa: F401
