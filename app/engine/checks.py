"""The reliability checks' measurements, run after every sweep on a small subset (``app.reliability`` judges).

Their cost is bounded whatever the dataset's size: every probe looks at ``PROBE`` samples at most
(a seeded choice of the evaluated ones), and the gradient-free attack at ``GRADIENT_FREE`` samples of
those the attack left standing, with ``QUERIES`` forward passes each. What each one measures:

- ``input-gradients``: samples whose cross-entropy gradient with respect to the input (the loss
  every gradient attack follows, on the true class, at the clean input) is all zero or not finite;
- ``logits-not-probabilities``: samples whose scores, as the attack sees them, are saturated
  probabilities: the runner-up class's softmax probability is below ``SATURATED`` (a logit margin
  over 46), where the loss is flat in float32 and a gradient attack stalls;
- ``deterministic-forward``: samples whose scores change over ``REPEATS`` more forward passes (beyond
  the verification's tolerance, 1e-4 + 1e-3 x the largest score);
- ``no-weaker-than-fgsm``: FGSM at every epsilon of the curve on the samples correct clean; the count
  is, at the epsilon where it is largest, how many more of them FGSM broke than the evaluation did (0 when
  the attack broke at least as many at every epsilon). Compared as counts, not sample by sample: two
  working attacks each break a few samples the other misses (on the test CNN, PGD's 50 steps from a random
  start missed 1 of 62 samples that FGSM broke, yet left 8% standing at epsilon 0.2 where FGSM left 18%);
- ``falls-towards-chance``: on ``HUGE_PROBE`` of them, the evaluation's own attack at an epsilon as
  large as the input range (L-inf) or the input box's diagonal (L2), where any image can become any
  other; the share of samples correct clean that it leaves standing must not exceed chance (1 / classes);
- ``gradient-free-attack``: Square (L-inf) or random search (L2) at the largest epsilon on samples the
  attack left standing there (its breaks re-checked in fp32 as the sweep's are). The share it breaks times
  the share left standing estimates how much the curve overstates accuracy there; over 2 points warns. A
  working gradient attack is not perfect (on the digits demo Square broke 2 of the 5 samples PGD left, 0.6
  points), while masking leaves nearly everything to the search (about 90 points on both masked test models).
  On a declared random defense a break must also fool the vote over a second, independent set of draws:
  the search queries the evaluation's own seeded draws and can overfit them (EOT, which the attack used,
  cannot), and a break that fools only those says nothing about the defense.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from .. import reliability
from ..reliability import THRESHOLDS, verdict
from .attacks.base import Attack, Context, verify
from .attacks.fgsm import FGSM
from .attacks.geometry import clip_to_bounds, project
from .attacks.random_search import RandomSearch
from .attacks.square import Square
from .attacks.state import ArraySource, Hooks, SweepState

PROBE = 64
HUGE_PROBE = 32
GRADIENT_FREE = 16
QUERIES = 300
REPEATS = 2
SATURATED = 1e-20
ATOL, RTOL = 1e-4, 1e-3  # as the model verification's


def _pick(positions: np.ndarray, k: int, seed: int) -> np.ndarray:
    """A seeded choice of ``k`` of ``positions``, sorted (the same one on every run of the request)."""
    if len(positions) <= k:
        return positions
    return np.sort(np.random.default_rng(seed).choice(positions, size=k, replace=False))


def _tensors(source, pos: np.ndarray, device: torch.device, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The probed samples (at most ``PROBE``), read a batch at a time like the sweep's reads."""
    xs, ys = [], []
    for i in range(0, len(pos), max(1, batch)):
        x, y = source.read(pos[i : i + batch])
        xs.append(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(device))
        ys.append(torch.from_numpy(np.asarray(y)).to(device))
    return torch.cat(xs), torch.cat(ys)


def model_probes(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, int]:
    """Counts for the three checks about the model itself, on one batch."""
    xg = x.clone().requires_grad_(True)
    scores = model(xg).float()
    loss = nn.functional.cross_entropy(scores, y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, xg, allow_unused=True)
    if grad is None:
        grad = torch.zeros_like(x)
    flat = grad.flatten(1)
    dead = (~torch.isfinite(flat).all(1)) | (flat.abs().amax(1) == 0)
    probs = torch.softmax(scores.detach(), 1)
    runner_up = probs.topk(2, dim=1).values[:, 1]
    with torch.no_grad():
        # The reference is a prediction forward too: on a declared random defense (``app.engine.defenses``) the
        # attack's forward (gradients on) averages fresh draws while a prediction is a seeded, repeatable vote.
        scores = model(x).float()
        tol = ATOL + RTOL * scores.abs().amax(1)
        moved = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        for _ in range(REPEATS):
            moved |= (model(x).float() - scores).abs().amax(1) > tol
    return {
        "input-gradients": int(dead.sum()),
        "logits-not-probabilities": int((runner_up < SATURATED).sum()),
        "deterministic-forward": int(moved.sum()),
    }


def fgsm_breaks(attack: Attack, model, x, y, epsilons: list[float], bounds, stop) -> np.ndarray:
    """Per sample and epsilon index, whether FGSM breaks it there (column 0, the clean input: never)."""
    fgsm = FGSM(norm=attack.norm, autocast=attack.autocast)
    broken = np.zeros((len(x), len(epsilons)), dtype=bool)
    for k in range(1, len(epsilons)):
        eps = float(epsilons[k])
        ctx = Context(model, bounds, torch.Generator(device=x.device), attack.autocast, should_stop=stop)
        delta, _ = fgsm.perturb(ctx, x, y, eps, None)
        delta = clip_to_bounds(x, project(delta.float(), eps, attack.norm), bounds)
        broken[:, k] = verify(model, x, y, delta, eps, bounds, attack.norm).cpu().numpy()
    return broken


def fgsm_excess(by_fgsm: np.ndarray, by_attack: np.ndarray, random_defense: bool) -> tuple[int, int | None]:
    """How many more samples FGSM broke than the evaluation's attack, at the epsilon where most (per sample
    and epsilon index, as ``fgsm_breaks``), and on a random defense the scatter allowed there.

    On a declared random defense both attacks follow EOT gradients drawn afresh, so a sample near the
    boundary falls to one or the other by the draw: of the ``d`` samples only one of them broke, FGSM's share
    scatters by about sqrt(d) / 2 around half, and only an excess over 2 sqrt(d) (two standard deviations of
    the difference, McNemar's) is counted."""
    by_fgsm, by_attack = by_fgsm[:, 1:], by_attack[:, 1:]  # the clean column: neither attack breaks anything
    excess = by_fgsm.sum(0).astype(np.int64) - by_attack.sum(0)
    if not random_defense:
        return int(max(0, excess.max(initial=0))), None
    if not excess.size:
        return 0, 0
    scatter = np.floor(2 * np.sqrt((by_fgsm ^ by_attack).sum(0))).astype(np.int64)
    beyond = np.maximum(0, excess - scatter)
    k = int(np.argmax(beyond if beyond.any() else excess))  # where it counts, else where FGSM came closest
    return int(beyond[k]), int(scatter[k])


def huge_epsilon(norm: str, bounds: tuple[float, float], sample_size: int) -> float:
    """The probe's epsilon: the whole input range (L-inf) or the input box's diagonal (L2)."""
    span = bounds[1] - bounds[0]
    return span if norm == "linf" else span * math.sqrt(sample_size)


def standing_at_huge(attack: Attack, model, x, y, bounds, device, stop) -> int:
    """How many of these (clean-correct) samples the evaluation's attack leaves standing at the huge epsilon."""
    big = huge_epsilon(attack.norm, bounds, int(x[0].numel()))
    source = ArraySource(x.cpu().numpy(), y.cpu().numpy())
    saved = attack.block, attack.offset
    attack.block, attack.offset = 0, 0
    try:
        state = attack.sweep(model, source, [0.0, big], bounds, hooks=Hooks(should_stop=stop), device=device)
    finally:
        attack.block, attack.offset = saved
    return int((state.broken_at > 1).sum())


def gradient_free_breaks(
    attack: Attack, model, x, y, eps: float, bounds, channels_last: bool, seed: int, stop
) -> tuple[int, int]:
    """How many of these samples (standing at ``eps`` after the evaluation's attack) a gradient-free attack breaks,
    and how many more it fooled only on the evaluation's own draws of a declared random defense (a break must
    also fool the vote over an independent set of draws: see ``Defended.redrawn``)."""
    second = model.redrawn() if getattr(model, "random", False) else None
    if attack.norm == "linf":
        search: Attack = Square(queries=QUERIES, channels_last=channels_last, autocast=attack.autocast)
    else:
        search = RandomSearch(queries=QUERIES, autocast=attack.autocast)
    generator = torch.Generator(device=x.device)
    generator.manual_seed(seed)
    broke = own_draws_only = 0
    for i in range(0, len(x), attack.batch_size):
        xs, ys = x[i : i + attack.batch_size], y[i : i + attack.batch_size]
        ctx = Context(model, bounds, generator, attack.autocast, should_stop=stop)
        delta, _ = search.perturb(ctx, xs, ys, eps, None)
        delta = clip_to_bounds(xs, project(delta.float(), eps, attack.norm), bounds)
        hit = verify(model, xs, ys, delta, eps, bounds, attack.norm)
        if second is not None and bool(hit.any()):
            held = hit & verify(second, xs, ys, delta, eps, bounds, attack.norm)
            own_draws_only += int((hit & ~held).sum())
            hit = held
        broke += int(hit.sum())
    return broke, own_draws_only


def _attack_counts(model, source, state, pos, x, y, epsilons, bounds, attack, device, n_classes, notes, seed, stop) -> dict:
    """``(count, samples, threshold, detail)`` of the three probes of the attack's strength (``detail``: see
    ``app.reliability.verdict``)."""
    correct = state.broken_at[pos] > 0
    keep = torch.from_numpy(correct).to(device)
    xc, yc, at = x[keep], y[keep], state.broken_at[pos][correct]
    n_correct = len(at)
    by_fgsm = np.zeros((0, len(epsilons)), dtype=bool)
    for i in range(0, n_correct, attack.batch_size):
        xs, ys = xc[i : i + attack.batch_size], yc[i : i + attack.batch_size]
        by_fgsm = np.concatenate([by_fgsm, fgsm_breaks(attack, model, xs, ys, epsilons, bounds, stop)])
    by_attack = at[:, None] <= np.arange(len(epsilons))[None, :]
    random_defense = bool(notes.get("random-defense"))
    worse, scatter = fgsm_excess(by_fgsm, by_attack, random_defense)
    few = min(n_correct, HUGE_PROBE)
    left = standing_at_huge(attack, model, xc[:few], yc[:few], bounds, device, stop) if few else 0
    standing = np.flatnonzero(state.broken_at == len(epsilons)) if len(epsilons) > 1 else np.empty(0, dtype=np.int64)
    gf_pos = _pick(standing, GRADIENT_FREE, seed + 1)
    broke = own_draws_only = 0
    if len(gf_pos):
        xs, ys = _tensors(source, gf_pos, device, attack.batch_size)
        channels_last = notes.get("input-layout") == "nhwc"
        broke, own_draws_only = gradient_free_breaks(
            attack, model, xs, ys, float(epsilons[-1]), bounds, channels_last, seed, stop
        )
    return {
        "no-weaker-than-fgsm": (worse, n_correct, THRESHOLDS["no-weaker-than-fgsm"], {"scatter": scatter}),
        "falls-towards-chance": (left, few, 1 / max(2, n_classes), {}),
        "gradient-free-attack": (
            broke,
            len(gf_pos),
            THRESHOLDS["gradient-free-attack"],
            {
                "standing": len(standing),
                "evaluated": len(state.broken_at),
                "own-draws-only": own_draws_only if random_defense else None,
            },
        ),
    }


def run(
    model: nn.Module,
    source,
    state: SweepState,
    epsilons: list[float],
    bounds: tuple[float, float],
    attack: Attack,
    *,
    device: torch.device,
    n_classes: int,
    notes: dict[str, Any],
    seed: int,
    noise: bool,
    accuracy: list[float],
    should_stop: Callable[[], bool] = lambda: False,
    traces: list[dict[str, Any]] | None = None,
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """All nine checks for one finished sweep (``noise``: a random-noise baseline, where the checks of
    the attack's strength do not apply). Returns the checks and what the probes cost."""
    t0 = time.perf_counter()
    ctx = reliability.context(attack.norm, notes)
    pos = _pick(np.arange(len(state.broken_at)), PROBE, seed)
    checks = {"curve-never-rises": reliability.curve(accuracy)}
    counts = {
        name: [0, len(pos), THRESHOLDS[name], {}]
        for name in ("input-gradients", "logits-not-probabilities", "deterministic-forward")
    }
    x, y = _tensors(source, pos, device, attack.batch_size) if len(pos) else (None, None)
    for i in range(0, len(pos), attack.batch_size):  # the batch the sweep fitted in memory
        for name, count in model_probes(model, x[i : i + attack.batch_size], y[i : i + attack.batch_size]).items():
            counts[name][0] += count
    if not len(pos):
        pass  # nothing evaluated: every check has no sample and says so
    elif noise:
        checks.update({c["name"]: c for c in reliability.not_applicable(reliability.ATTACK_CHECKS)})
    else:
        args = (epsilons, bounds, attack, device, n_classes, notes, seed, should_stop)
        counts.update(_attack_counts(model, source, state, pos, x, y, *args))
        checks.update({c["name"]: c for c in reliability.from_traces(traces, bool(notes.get("random-defense")))})
    for name, (count, samples, threshold, extra) in counts.items():
        detail = {key: value for key, value in extra.items() if value is not None}
        checks[name] = verdict(name, count, samples, threshold, ctx, detail=detail)
    cost = {
        "probe-samples": int(len(pos)),
        "gradient-free-samples": counts.get("gradient-free-attack", (0, 0))[1],
        "gradient-free-queries": QUERIES,
        "seconds": round(time.perf_counter() - t0, 3),
    }
    return [checks.get(name) or verdict(name, 0, 0, 0.0) for name in reliability.NAMES], cost
