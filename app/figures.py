"""The figures of a finished evaluation, computed from its per-sample arrays (numpy only, no torch).

One owner for both places that write an output: the engine (``app.engine.evaluation``) and the
merge of a sharded evaluation (``app.merge``), which concatenates the shards' ``samples.npz`` and
must produce exactly the figures one job would. Every figure is a function of these arrays:

- ``label`` [n]: the true class; ``broken_at`` [n]: the first epsilon index that broke the sample
  (0: misclassified clean; ``n_eps``: never broken); ``norm`` [n]: the norm of the counted adversarial;
- ``min_norm`` [n] (FMN and ``auto`` only): the minimal-norm search's smallest adversarial norm (inf: none found);
- ``true_conf`` [n, n_eps]: the softmax probability of the true class at the point the attack returned
  for each epsilon (column 0: the clean input). Defined in ``app.engine.attacks.base``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

Z95 = 1.959963984540054  # the standard normal's 97.5% quantile


def wilson(successes: int, n: int, z: float = Z95) -> list[float] | None:
    """The Wilson score interval of a proportion (Wilson, 1927); None when ``n`` is 0."""
    if n <= 0:
        return None
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At 0 or n successes the bound is exactly 0 or 1; the formula leaves rounding (8.7e-19) there.
    low = 0.0 if successes <= 0 else max(0.0, centre - half)
    high = 1.0 if successes >= n else min(1.0, centre + half)
    return [low, high]


def _mean(values: np.ndarray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if len(finite) else None


def breaking_perturbation(arrays: dict[str, np.ndarray], fractions: list[float], norm: str, span: float) -> dict[str, Any] | None:
    """Median and quartiles of each sample's smallest breaking perturbation, as a fraction of the
    input range (``span`` = ub - lb), over the samples correct before the attack that have one.

    With a minimal-norm search (FMN, ``auto``): the smaller of its norm and the counted adversarial's
    (``auto``'s APGD may find a smaller one), including samples broken beyond the largest epsilon.
    Otherwise the smallest grid epsilon that broke the sample (``epsilon-grid``): only samples broken
    within the grid count, so the distribution is of the samples the attack broke.
    """
    broken_at = arrays["broken_at"]
    n_eps = len(fractions)
    correct = broken_at > 0
    if "min_norm" in arrays:
        with np.errstate(invalid="ignore"):
            values = np.fmin(arrays["min_norm"].astype(np.float64), arrays["norm"].astype(np.float64))[correct]
        values = values[np.isfinite(values) & (values > 0)] / (span or 1.0)
        source = "minimal-norm"
    else:
        hit = broken_at[correct & (broken_at < n_eps)]
        values = np.asarray(fractions, dtype=np.float64)[hit]
        source = "epsilon-grid"
    if len(values) == 0:
        return None
    q1, median, q3 = (float(v) for v in np.percentile(values, [25, 50, 75]))
    return {
        "source": source,
        "norm": norm,
        "unit": "fraction of the input range",
        "count": int(len(values)),
        "median": median,
        "q1": q1,
        "q3": q3,
    }


def figures(
    arrays: dict[str, np.ndarray], fractions: list[float], epsilons: list[float], norm: str, span: float
) -> dict[str, Any]:
    """The ``figures`` block of an output (shape in README): per epsilon, accuracy with its 95% Wilson
    interval, the attack success rate among the samples correct before the attack (with its interval),
    the mean true-class confidence and the per-class accuracy; and the breaking-perturbation distribution."""
    labels, broken_at = arrays["label"], arrays["broken_at"]
    n = len(labels)
    conf = arrays.get("true_conf")
    classes, counts = np.unique(labels, return_counts=True)
    correct = broken_at > 0
    n_correct = int(correct.sum())
    rows = []
    for k, (fraction, absolute) in enumerate(zip(fractions, epsilons)):
        standing = broken_at > k
        right = int(standing.sum())
        broke = int((correct & ~standing).sum())
        per_class = [float(standing[labels == c].mean()) for c in classes]
        rows.append(
            {
                "epsilon": fraction,
                "epsilon-absolute": absolute,
                "n": n,
                "accuracy": right / n if n else 0.0,
                "accuracy-ci95": wilson(right, n),
                "attack-success-rate": broke / n_correct if n_correct else None,
                "attack-success-rate-ci95": wilson(broke, n_correct),
                "mean-true-confidence": _mean(conf[:, k]) if conf is not None and conf.shape[1] > k else None,
                "per-class-accuracy": per_class,
            }
        )
    return {
        "classes": [int(c) for c in classes],
        "class-counts": [int(c) for c in counts],
        "mean-true-confidence-clean": rows[0]["mean-true-confidence"] if rows else None,
        "per-epsilon": rows,
        "breaking-perturbation": breaking_perturbation(arrays, fractions, norm, span),
    }


def largest_rise(accuracy: list[float]) -> float:
    """The largest increase of accuracy from one epsilon to the next (0 for a curve that never rises)."""
    return max([0.0, *(b - a for a, b in zip(accuracy, accuracy[1:]))])
