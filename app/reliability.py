"""The reliability checks' verdicts: from measured counts to ``pass``/``warn`` and a plain sentence (no torch).

The engine (``app.engine.checks``) measures; this module judges, so the merge of a sharded
evaluation (``app.merge``) can combine the shards' counts and judge again with the same words.
Each check is ``{"name", "status", "message", "value", "count", "samples", "threshold"}``: ``count``
of ``samples`` looked at were bad, ``value`` is their share (for ``curve-never-rises``, the largest
rise of the curve), and the check warns when ``value`` exceeds ``threshold``. A check that does not
apply (the random-noise baseline is not an attack) or was not measured passes with ``value`` null
and says so. ``reliable`` is false exactly when a check warns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

NAMES = (
    "curve-never-rises",
    "no-weaker-than-fgsm",
    "falls-towards-chance",
    "input-gradients",
    "logits-not-probabilities",
    "deterministic-forward",
    "loss-converged",
    "path-adversarial-kept",
    "gradient-free-attack",
)
# Checks about the attack's strength: they do not apply to the random-noise baseline.
ATTACK_CHECKS = {"no-weaker-than-fgsm", "falls-towards-chance", "loss-converged", "path-adversarial-kept", "gradient-free-attack"}
THRESHOLDS = {
    "curve-never-rises": 0.0,
    "no-weaker-than-fgsm": 0.0,
    "input-gradients": 0.05,
    "logits-not-probabilities": 0.05,
    "deterministic-forward": 0.0,
    "loss-converged": 0.1,
    "path-adversarial-kept": 0.0,
    "gradient-free-attack": 0.02,  # points of accuracy at the largest epsilon (see ``verdict``)
}  # falls-towards-chance: 1 / number of classes, set by the engine
NOTHING = {
    "no-weaker-than-fgsm": "Nothing to compare: no sample checked was classified correctly before the attack.",
    "falls-towards-chance": "Nothing to check: no sample checked was classified correctly before the attack.",
    "input-gradients": "Nothing to check: no sample was evaluated.",
    "logits-not-probabilities": "Nothing to check: no sample was evaluated.",
    "deterministic-forward": "Nothing to check: no sample was evaluated.",
    "loss-converged": "Nothing to check: the attack broke every traced sample, so none of its runs failed.",
    "path-adversarial-kept": "Nothing to check: no attack run was traced.",
    "gradient-free-attack": "Nothing to check: the evaluation's attack left no sample standing at the largest perturbation.",
}
# A failed attack's loss is "still rising" when the mean over its last tenth of steps exceeds the
# mean over the tenth before by more than this share of the loss's whole range along the path.
RISING = 0.05
DETAIL = ("standing", "evaluated", "own-draws-only", "scatter")  # a check's counts besides its own (see ``verdict``)


def _pct(share: float) -> str:
    return f"{100 * share:.0f}%" if share == 0 or share >= 0.01 else f"{100 * share:.2g}%"


def _msg_curve(c: int, n: int, v: float, t: float, ctx: dict) -> tuple[str, str]:
    return (
        f"Accuracy rises by up to {v:.3g} at a larger perturbation: the attack missed samples it should have broken.",
        "Accuracy never rises as the perturbation grows, as it must for a consistent attack.",
    )


def _msg_fgsm(c: int, n: int, v: float, t: float, ctx: dict) -> tuple[str, str]:
    if "scatter" in ctx:
        within = (
            "a random defense's draws decide near the boundary, so an excess up to twice the square root of the "
            f"samples only one of the two attacks broke is not counted; allowed here: {ctx['scatter']}"
        )
        return (
            f"The one-step FGSM attack broke {c} more of {n} samples checked than the evaluation's attack did at the "
            f"same perturbation, beyond the scatter of the draws ({within}): that attack underperformed.",
            f"The evaluation's attack broke as many of {n} samples checked as the one-step FGSM attack at every "
            f"perturbation, up to the scatter of the draws ({within}).",
        )
    return (
        f"The one-step FGSM attack broke {c} more of {n} samples checked than the evaluation's attack did at the "
        "same perturbation: that attack underperformed, and the curve overstates robustness.",
        f"The evaluation's attack broke at least as many of {n} samples checked as the one-step FGSM attack, "
        "at every perturbation.",
    )


def _msg_chance(c: int, n: int, v: float, t: float, ctx: dict) -> tuple[str, str]:
    probe = ctx.get("probe", "as large as the whole input range")
    where = f"At a perturbation {probe}, where any image can be turned into any other,"
    return (
        f"{where} the attack still left {c} of {n} samples checked correct ({_pct(v)}, chance is {_pct(t)}): "
        "its gradients are probably masked or broken.",
        f"{where} the attack left {c} of {n} samples checked correct ({_pct(v)}, chance is {_pct(t)}), as a working attack must.",
    )


def _msg_gradients(c: int, n: int, v: float, t: float, ctx: dict) -> tuple[str, str]:
    return (
        f"{c} of {n} samples checked ({_pct(v)}) give the attack a zero or invalid gradient to follow: gradient "
        "attacks are blind there, so the curve may overstate robustness (gradient masking).",
        f"The attack's gradient is usable (non-zero and finite) for {_pct(1 - v)} of {n} samples checked.",
    )


def _msg_logits(c: int, n: int, v: float, t: float, ctx: dict) -> tuple[str, str]:
    if ctx.get("probabilities-to-log"):
        how = "The model outputs probabilities, which the attack uses through their logarithm"
    elif ctx.get("softmax-removed"):
        how = "The model ends in a softmax, which was removed so the attack uses the scores before it"
    else:
        how = "The model outputs scores (logits), as attacks need"
    return (
        f"{how}, but for {c} of {n} samples checked ({_pct(v)}) the probabilities are saturated at 0 or 1: "
        "the attack's loss is flat there, so a failed attack does not mean a robust model.",
        f"{how}; they are not saturated ({c} of {n} samples checked are).",
    )


def _msg_deterministic(c: int, n: int, v: float, t: float, ctx: dict) -> tuple[str, str]:
    random = ctx.get("random-defense")
    if random:  # declared: attacked with EOT, predicted by a seeded majority vote that must repeat exactly
        names = ", ".join(random)
        return (
            f"The model is randomized beyond its declared defense ({names}): repeated majority-vote predictions on the "
            f"same input disagree for {c} of {n} samples, which can make attacks look weaker than they are.",
            f"The declared random defense ({names}) is attacked with expectation over transformation and predicted by a "
            f"seeded majority vote over its draws; repeated predictions agree for all {n} samples checked.",
        )
    return (
        f"Repeated forward passes on the same input disagree for {c} of {n} samples: the model is randomized, "
        "which can make attacks look weaker than they are.",
        f"Repeated forward passes give the same scores for all {n} samples checked.",
    )


def _msg_loss(c: int, n: int, v: float, t: float, ctx: dict) -> tuple[str, str]:
    return (
        f"On {c} of {n} attack runs that failed ({_pct(v)}), the loss was still rising when the attack stopped: "
        "more steps could break these samples.",
        f"The attack's loss had levelled off when it stopped on {n - c} of {n} runs that failed.",
    )


def _msg_path(c: int, n: int, v: float, t: float, ctx: dict) -> tuple[str, str]:
    return (
        f"On {c} of {n} attack runs, a point along the way fooled the model but the point returned did not: "
        "the attack threw away an adversarial example it had found.",
        f"No attack run among {n} found an adversarial example along the way and then returned one that was not.",
    )


def _msg_gradient_free(c: int, n: int, v: float, t: float, ctx: dict) -> tuple[str, str]:
    what = ctx.get("gradient-free", "a gradient-free attack")
    what = f"{what[0].upper()}{what[1:]} broke {c} of {n} samples that the evaluation's attack left standing"
    what += " at the largest perturbation"
    if "own-draws-only" in ctx:
        only = ctx["own-draws-only"]
        what += (
            " (a break counts only where it also fools the vote over a second, independent set of the random"
            f" defense's draws; {only} more fooled only the evaluation's own draws)"
        )
    points = f"about {100 * v:.1f} points"
    return (
        f"{what}, so the accuracy there is overstated by {points} (more than {100 * t:.0f}): the gradients misled the attack.",
        f"{what}: the accuracy there is overstated by {points} at most (a working gradient attack is not perfect; "
        f"more than {100 * t:.0f} points would suggest masked gradients).",
    )


MESSAGES: dict[str, Callable[[int, int, float, float, dict], tuple[str, str]]] = {
    "curve-never-rises": _msg_curve,
    "no-weaker-than-fgsm": _msg_fgsm,
    "falls-towards-chance": _msg_chance,
    "input-gradients": _msg_gradients,
    "logits-not-probabilities": _msg_logits,
    "deterministic-forward": _msg_deterministic,
    "loss-converged": _msg_loss,
    "path-adversarial-kept": _msg_path,
    "gradient-free-attack": _msg_gradient_free,
}


def verdict(
    name: str,
    count: int,
    samples: int,
    threshold: float,
    ctx: dict[str, Any] | None = None,
    *,
    detail: dict[str, int] | None = None,
) -> dict[str, Any]:
    """Judge a measured check: ``count`` bad of ``samples`` looked at. With no samples at all, it passes
    saying there was nothing to look at. ``detail`` goes into the check as it is and into its sentences:

    - ``standing`` of ``evaluated`` samples (the gradient-free attack's, which tries a few of the samples left
      standing): the value is the estimated overstatement of the accuracy at the largest epsilon, the share it
      broke times the share left standing;
    - ``own-draws-only`` (gradient-free, random defense): its breaks that fooled the evaluation's draws but not
      a second, independent set, which do not count;
    - ``scatter`` (FGSM comparison, random defense): the excess allowed as the draws' scatter, not counted."""
    ctx = ctx or {}
    if samples <= 0:
        return unmeasured(name, NOTHING[name])
    extra = {key: int(value) for key, value in (detail or {}).items()}
    value = count / samples
    if extra.get("evaluated"):
        value *= extra.get("standing", 0) / extra["evaluated"]
    warn, ok = MESSAGES[name](count, samples, value, threshold, {**ctx, **extra})
    bad = value > threshold
    return {
        "name": name,
        "status": "warn" if bad else "pass",
        "message": warn if bad else ok,
        "value": value,
        "count": int(count),
        "samples": int(samples),
        "threshold": threshold,
        **extra,
    }


def unmeasured(name: str, message: str) -> dict[str, Any]:
    """A check that does not apply or was not measured: it passes and says why."""
    return {"name": name, "status": "pass", "message": message, "value": None, "count": None, "samples": None, "threshold": None}


def curve(accuracy: list[float]) -> dict[str, Any]:
    """``curve-never-rises`` from the curve: warns when accuracy ever increases with epsilon."""
    rises = [b - a for a, b in zip(accuracy, accuracy[1:])]
    largest = max([0.0, *rises])
    warn, ok = _msg_curve(0, 0, largest, 0.0, {})
    return {
        "name": "curve-never-rises",
        "status": "warn" if largest > 0 else "pass",
        "message": warn if largest > 0 else ok,
        "value": largest,
        "count": sum(r > 0 for r in rises),
        "samples": len(rises),
        "threshold": 0.0,
    }


def still_rising(loss: list[float], noisy: bool = False) -> bool:
    """Was this loss still going up at the end? (Needs 4 steps or more; see ``RISING``.)

    ``noisy``: the loss is an average over random draws that change at every step (a declared random
    defense, attacked with EOT), so it jitters while it has levelled off: the windows are a quarter of
    the path each, the last one is compared with the highest earlier one (a loss still climbing reaches
    a level it never held before; one jittering on a plateau does not), and the rise must also exceed
    twice its standard error (the steps' own scatter)."""
    values = [float(v) for v in loss if v == v and abs(v) != float("inf")]
    if len(values) < 4:
        return False
    spread = max(values) - min(values)
    w = max(1, len(values) // (4 if noisy else 10))
    last = values[-w:]
    before = values[-2 * w : -w]
    if noisy:
        earlier = [values[end - w : end] for end in range(len(values) - w, w - 1, -w)]
        before = max(earlier, key=lambda part: sum(part) / w)
    rise = sum(last) / w - sum(before) / w
    if noisy and w > 1:
        var = sum((v - sum(part) / w) ** 2 for part in (last, before) for v in part) / (2 * w - 2)
        if rise <= 2 * (2 * var / w) ** 0.5:
            return False
    return rise > RISING * spread and spread > 0


def from_traces(traces: list[dict[str, Any]] | None, noisy: bool = False) -> list[dict[str, Any]]:
    """``loss-converged`` and ``path-adversarial-kept`` from the attack's per-step traces (the ``trace``
    dicts of the per-sample inspection: ``loss``, ``distance``, ``adversarial-on-path``,
    ``returned-adversarial``). None: not measured. ``noisy``: see :func:`still_rising`."""
    if traces is None:
        why = "Not measured: this evaluation recorded no per-step traces of the attack."
        return [unmeasured("loss-converged", why), unmeasured("path-adversarial-kept", why)]
    traces = [t for t in traces if t]
    failed = [t for t in traces if not t.get("returned-adversarial")]
    rising = sum(still_rising(list(t.get("loss") or []), noisy) for t in failed)
    lost = sum(bool(t.get("adversarial-on-path")) and not t.get("returned-adversarial") for t in traces)
    return [
        verdict("loss-converged", rising, len(failed), THRESHOLDS["loss-converged"]),
        verdict("path-adversarial-kept", lost, len(traces), THRESHOLDS["path-adversarial-kept"]),
    ]


def combine(per_shard: list[list[dict[str, Any]]], accuracy: list[float], ctx: dict[str, Any]) -> list[dict[str, Any]]:
    """One evaluation's checks from its shards': counts and samples add up and the share is judged
    again (so a shard's warning survives unless its bad count is diluted below the threshold of a
    share check; a count check, threshold 0, warns when any shard's does). The curve is judged on
    the merged curve. A check no shard measured keeps the first shard's explanation."""
    out = [curve(accuracy)]
    for name in NAMES[1:]:
        found = [c for checks in per_shard for c in checks if c["name"] == name]
        measured = [c for c in found if c.get("samples")]
        if not measured:
            out.append(found[0] if found else unmeasured(name, "Not measured."))
            continue
        threshold = measured[0]["threshold"]
        total = {key: sum(c[key] for c in measured) for key in ("count", "samples", *DETAIL) if key in measured[0]}
        # The gradient-free estimate is pooled: the share broken over all shards times the share standing over them.
        detail = {key: value for key, value in total.items() if key in DETAIL}
        out.append(verdict(name, total["count"], total["samples"], threshold, ctx, detail=detail))
    return out


def context(norm: str, notes: dict[str, Any]) -> dict[str, Any]:
    """What the sentences name besides counts: how the model's outputs were taken (its ``model-notes``),
    the probe's size and the gradient-free attack, for the evaluation's ``norm``."""
    return {
        "softmax-removed": bool(notes.get("softmax-removed")),
        "probabilities-to-log": bool(notes.get("probabilities-to-log")),
        "probe": "as large as the whole input range" if norm == "linf" else "as large as the input box's diagonal (L2)",
        "gradient-free": "the gradient-free Square attack" if norm == "linf" else "a gradient-free random search",
        "random-defense": list(notes.get("random-defense") or []),
    }


def not_applicable(names: set[str] | tuple[str, ...]) -> list[dict[str, Any]]:
    """The attack-strength checks of a random-noise baseline, which is not an attack."""
    return [unmeasured(n, "Does not apply: this curve is a random-noise baseline, not an attack.") for n in names]


def reliable(checks: list[dict[str, Any]]) -> bool:
    return not any(c["status"] == "warn" for c in checks)
