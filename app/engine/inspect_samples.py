"""Per-sample inspection: the attack re-run, traced, on the first samples of an evaluation.

After the sweep, the first ``inspect-samples`` positions of the selection (those this job holds:
a shard inspects the ones in its range) are attacked again at every epsilon, each from scratch
(no warm start), with a :class:`~.attacks.trace.Trace` recording each step's loss and distance.
FMN's path is its one minimal-norm run (the same for every epsilon; a point counts as adversarial
at epsilon only inside that ball); ``auto`` re-runs its APGD stages from the sweep's FMN anchors.

What is shown agrees with the curve, whatever the re-run finds: a sample is ``adversarial`` at
epsilon index k exactly when the sweep broke it at an index b <= k. Its image there is the re-run's
point when that point is a verified adversarial, else the adversarial the sweep counted at b (it
lies in every larger ball). Below b the image is the re-run's returned point (zero perturbation
when PGD found nothing). A sample misclassified before any attack (b = 0) is never attacked:
its images are the clean one and its traces ``null``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import images
from .attacks.base import Attack, Context, StopRequested, verify
from .attacks.fmn import minimal_norm
from .attacks.geometry import clip_to_bounds, lp_norm, project
from .attacks.state import SweepState
from .attacks.trace import Trace
from .attribution import METHOD, integrated_gradients

log = logging.getLogger(__name__)


@dataclass
class Inspection:
    """What one job writes: ``index.json``'s content, the PNGs by (sample, name), and the traces."""

    index: dict[str, Any]
    images: dict[tuple[int, str], bytes]
    traces: list[dict[str, Any]]


def _never() -> bool:
    return False


def positions(count: int, offset: int, n: int) -> np.ndarray:
    """The local positions of this source (a shard starting at ``offset``) among the first ``count`` of the selection."""
    return np.arange(max(0, min(n, count - offset)))


def inspect_safely(*args: Any, **kwargs: Any) -> tuple[Inspection | None, str | None]:
    """:func:`inspect`, and the reason when it failed: a failure here (an attribution the model does not
    support, say) leaves the evaluation's curve standing, with ``inspection.error`` saying why there is none."""
    try:
        return inspect(*args, **kwargs), None
    except StopRequested:
        raise
    except Exception as exc:
        log.exception("the per-sample inspection failed")
        return None, f"the per-sample inspection failed: {type(exc).__name__}: {str(exc)[:200]}"


def inspect(
    attack: Attack,
    model: nn.Module,
    source: Any,
    state: SweepState,
    epsilons: list[float],
    fractions: list[float],
    bounds: tuple[float, float],
    layout: str,
    indexes: np.ndarray,
    count: int,
    device: torch.device,
    should_stop: Callable[[], bool] = _never,
) -> Inspection | None:
    """Inspect this source's share of the first ``count`` samples; None when it holds none of them."""
    pos = positions(count, attack.offset, len(source))
    if len(pos) == 0:
        return None
    # A sample's points at every epsilon (and their attributions) are held at once: the batch the sweep
    # fitted in memory, shared out over the epsilons, bounds how many samples are inspected together.
    size = max(1, attack.batch_size // len(epsilons))
    samples, pngs, traces = [], {}, []
    for start in range(0, len(pos), size):
        part = _inspect_part(
            attack, model, source, state, epsilons, fractions, bounds, layout, indexes, pos[start : start + size], device,
            should_stop,
        )  # fmt: skip
        samples += part.index["samples"]
        pngs.update(part.images)
        traces += part.traces
    index = {"samples": samples, "attack": attack.name, "norm": attack.norm, "layout": layout, "attribution": METHOD}
    return Inspection(index, pngs, traces)


def _inspect_part(
    attack: Attack,
    model: nn.Module,
    source: Any,
    state: SweepState,
    epsilons: list[float],
    fractions: list[float],
    bounds: tuple[float, float],
    layout: str,
    indexes: np.ndarray,
    pos: np.ndarray,
    device: torch.device,
    should_stop: Callable[[], bool],
) -> Inspection:
    """The samples at local positions ``pos``: re-attacked, traced and drawn together."""
    xs, ys = source.read(pos)
    x, y = torch.from_numpy(np.ascontiguousarray(xs)).to(device), torch.from_numpy(np.asarray(ys)).to(device)
    broken = state.broken_at[pos]
    counted = torch.from_numpy(np.asarray(state.delta[pos])).to(device)
    rows = torch.from_numpy(np.flatnonzero(broken > 0)).to(device)  # attacked: correct before the attack
    anchor = torch.from_numpy(np.asarray(state.anchor[pos])).to(device)[rows] if state.anchor is not None else None
    first = int(pos[0])
    ctx = Context(model, bounds, attack.generator(device, 0, first), attack.autocast, should_stop=should_stop)
    reruns = _rerun(attack, ctx, x[rows], y[rows], epsilons, anchor, first)

    shown = [torch.zeros_like(x)]  # per epsilon index: the perturbation shown for each sample
    for k in range(1, len(epsilons)):
        delta, ok, _ = reruns[k - 1]
        d = torch.zeros_like(x)
        d[rows] = delta
        use_counted = torch.zeros(len(x), dtype=torch.bool, device=device)
        use_counted[rows] = ~ok
        use_counted &= torch.from_numpy(broken <= k).to(device)
        d[use_counted] = counted[use_counted]
        d[torch.from_numpy(broken == 0).to(device)] = 0
        shown.append(d)

    points = torch.cat([x + d for d in shown])  # (epsilon, sample) order
    with torch.no_grad():
        probs = torch.cat([torch.softmax(model(chunk).float(), 1) for chunk in points.split(attack.batch_size)])
    pred = probs.argmax(1)
    ctx.check()
    attr = integrated_gradients(model, points, pred, bounds[0], attack.batch_size, ctx.check)
    m = len(x)
    probs, pred = probs.cpu().numpy().reshape(len(epsilons), m, -1), pred.cpu().numpy().reshape(len(epsilons), m)
    attr = attr.reshape(len(epsilons), m, *xs.shape[1:])
    norms = [lp_norm(d, attack.norm).cpu().numpy() for d in shown]
    deltas = [d.cpu().numpy() for d in shown]
    row_of = {int(r): j for j, r in enumerate(rows.cpu().numpy())}

    samples, pngs, traces = [], {}, []
    for i, p in enumerate(pos):
        ctx.check()  # a sample's images: up to 3 per epsilon, each a fraction of a second at most
        sample = int(p + attack.offset)
        label = int(ys[i])
        entries = []
        for k, eps in enumerate(epsilons):
            trace = None
            if k > 0 and i in row_of:
                _, ok, tr = reruns[k - 1]
                trace = tr.summary(row_of[i], eps, bool(ok[row_of[i]]))
                traces.append(trace)
            entries.append(
                {
                    "epsilon": fractions[k],
                    "epsilon-absolute": eps,
                    "adversarial": bool(broken[i] <= k),
                    **_prediction(probs[k, i], label),
                    "norm": float(norms[k][i]),
                    "trace": trace,
                }
            )
        samples.append(
            {
                "sample": sample,
                "position": sample,
                "index": int(indexes[p]),
                "label": label,
                "clean": _prediction(probs[0, i], label),
                "epsilons": entries,
            }
        )
        pngs.update(_images(sample, xs[i], [d[i] for d in deltas], attr[:, i], layout, bounds))
    return Inspection({"samples": samples}, pngs, traces)


def _rerun(
    attack: Attack,
    ctx: Context,
    x: torch.Tensor,
    y: torch.Tensor,
    epsilons: list[float],
    anchor: torch.Tensor | None,
    first: int = 0,
) -> list[tuple[torch.Tensor, torch.Tensor, Trace]]:
    """Per epsilon (index 1 on): the re-run's returned perturbation (projected, clipped), whether it is
    a verified adversarial, and its trace."""
    out = []
    if len(x) == 0:  # every inspected sample was misclassified before the attack
        return [(x.clone(), torch.zeros(0, dtype=torch.bool, device=x.device), Trace(y, attack.norm)) for _ in epsilons[1:]]
    if attack.name == "fmn":  # one minimal-norm run: its path is every epsilon's
        trace = Trace(y, attack.norm)
        best, _ = minimal_norm(
            ctx.model, x, y, norm=attack.norm, bounds=ctx.bounds, steps=attack.steps, step_size=attack.step_size,
            gamma=attack.gamma, logits=ctx.logits, check=ctx.check, trace=trace,
        )  # fmt: skip
        for eps in epsilons[1:]:
            delta = clip_to_bounds(x, project(best, eps, attack.norm), ctx.bounds)
            out.append((delta, verify(ctx.model, x, y, delta, eps, ctx.bounds, attack.norm), trace))
        return out
    for k, eps in enumerate(epsilons[1:], start=1):
        trace = Trace(y, attack.norm)
        run = Context(
            ctx.model, ctx.bounds, attack.generator(x.device, k, first), ctx.autocast, should_stop=ctx.should_stop, trace=trace
        )
        if anchor is not None:
            run.extra["anchor"] = anchor
        delta, _ = attack.perturb(run, x, y, eps, None)
        delta = clip_to_bounds(x, project(delta.detach().float(), eps, attack.norm), ctx.bounds)
        out.append((delta, verify(ctx.model, x, y, delta, eps, ctx.bounds, attack.norm), trace))
    return out


def _prediction(probs: np.ndarray, label: int) -> dict[str, Any]:
    top = int(probs.argmax())
    return {
        "prediction": top,
        "confidence": float(probs[top]),
        "true-confidence": float(probs[label]) if label < len(probs) else 0.0,
    }


def _images(sample: int, x: np.ndarray, deltas: list[np.ndarray], attr: np.ndarray, layout: str, bounds) -> dict:
    """One sample's PNGs: clean, and per epsilon the adversarial, its magnified difference and the attribution maps
    (one colour scale for the sample's clean and adversarial maps, so they compare)."""
    scale = images.heatmap_scale(list(attr), layout)
    out = {
        (sample, "clean"): images.png(images.sample_pixels(x, layout, bounds)),
        (sample, "attribution-clean"): images.png(images.heatmap_pixels(attr[0], layout, scale)),
    }
    for k in range(1, len(deltas)):
        out[(sample, f"adversarial-{k}")] = images.png(images.sample_pixels(x + deltas[k], layout, bounds))
        out[(sample, f"difference-{k}")] = images.png(images.difference_pixels(deltas[k], layout))
        out[(sample, f"attribution-adversarial-{k}")] = images.png(images.heatmap_pixels(attr[k], layout, scale))
    return out
