"""A finished evaluation's per-epsilon figures as rows: what the CSV, the plots and the report show.

An output written since issue 9 carries a ``figures`` block (intervals, attack success rate,
confidence, per-class accuracy); an older one has only the curve, and its intervals come from
``app.figures.wilson``, the one that computes new outputs'. Both read here, so every format shows
the same numbers, and an old output shows what exists. No torch.
"""

from __future__ import annotations

import csv
import io
from typing import Any

from .figures import wilson

NORM_LABELS = {"linf": "L\u221e", "l2": "L2"}
MAX_LABEL = 60  # characters of a user-given name shown in a plot or a title


def has_figures(output: dict[str, Any]) -> bool:
    figures = output.get("figures")
    return isinstance(figures, dict) and isinstance(figures.get("per-epsilon"), list) and bool(figures["per-epsilon"])


def _pair(value: Any) -> tuple[Any, Any]:
    return (value[0], value[1]) if isinstance(value, (list, tuple)) and len(value) == 2 else (None, None)


def rows(output: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per epsilon, in the curve's order, with the same keys whatever the output's age.

    Keys: epsilon, epsilon-absolute, n, accuracy, accuracy-ci95 (a pair; estimated from accuracy and n
    for an old output, see ``estimated``), attack-success-rate(-ci95), mean-true-confidence,
    per-class-accuracy, undefended-accuracy (a defended evaluation's bare model on the same samples)
    (None where the output does not have them)."""
    curve = output.get("sec-curve") or {}
    bare_ys = list(((undefended(output) or {}).get("sec-curve") or {}).get("y-values") or [])
    xs, ys = list(curve.get("x-values") or []), list(curve.get("y-values") or [])
    absolute = (output.get("attack") or {}).get("epsilons-absolute") or []
    n = output.get("n-samples")
    per = output["figures"]["per-epsilon"] if has_figures(output) else []
    out = []
    for k, (x, y) in enumerate(zip(xs, ys)):
        fig = per[k] if k < len(per) and isinstance(per[k], dict) else {}
        n_k = fig.get("n", n)
        ci = _pair(fig.get("accuracy-ci95"))
        estimated = ci == (None, None) and isinstance(n_k, int) and n_k > 0
        if estimated:  # accuracy is a count over n: round(y * n) recovers it exactly
            ci = _pair(wilson(round(float(y) * n_k), n_k))
        out.append(
            {
                "epsilon": x,
                "epsilon-absolute": fig.get("epsilon-absolute", absolute[k] if k < len(absolute) else None),
                "n": n_k,
                "accuracy": y,
                "accuracy-ci95": ci,
                "estimated": estimated,
                "attack-success-rate": fig.get("attack-success-rate"),
                "attack-success-rate-ci95": _pair(fig.get("attack-success-rate-ci95")),
                "mean-true-confidence": fig.get("mean-true-confidence"),
                "per-class-accuracy": fig.get("per-class-accuracy"),
                "undefended-accuracy": bare_ys[k] if k < len(bare_ys) else None,
            }
        )
    return out


def classes(output: dict[str, Any]) -> list[Any]:
    """The class labels the per-class columns follow (empty for an old output)."""
    return list(output["figures"].get("classes") or []) if has_figures(output) else []


def csv_text(output: dict[str, Any]) -> str:
    """The CSV: a header, then one row per epsilon with every per-epsilon figure the output has.

    An old output (no ``figures``) gets epsilon, epsilon-absolute, n and accuracy only: its intervals
    would be estimates, and a CSV column should hold what the evaluation measured."""
    table = rows(output)
    full = has_figures(output)
    labels = classes(output)
    header = ["epsilon", "epsilon-absolute", "n", "accuracy"]
    bare = undefended(output)
    if bare is not None:  # a defended evaluation: the bare model's accuracy on the same samples, beside it
        header.append("undefended-accuracy")
    if full:
        header += ["accuracy-ci95-low", "accuracy-ci95-high", "attack-success-rate", "attack-success-rate-ci95-low",
                   "attack-success-rate-ci95-high", "mean-true-confidence"]
        header += [f"accuracy-class-{c}" for c in labels]
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(header)
    for row in table:
        cells = [row["epsilon"], row["epsilon-absolute"], row["n"], row["accuracy"]]
        if bare is not None:
            cells.append(row["undefended-accuracy"])
        if full:
            cells += [*row["accuracy-ci95"], row["attack-success-rate"], *row["attack-success-rate-ci95"]]
            cells.append(row["mean-true-confidence"])
            per_class = row["per-class-accuracy"] if isinstance(row["per-class-accuracy"], list) else []
            cells += [per_class[i] if i < len(per_class) else None for i in range(len(labels))]
        writer.writerow(["" if c is None else c for c in cells])
    return buffer.getvalue()


def short(text: Any, limit: int = MAX_LABEL) -> str:
    """A user-given name made safe to draw: printable characters only, at most ``limit`` of them."""
    clean = "".join(ch if ch.isprintable() else "?" for ch in str(text))
    return clean if len(clean) <= limit else clean[: limit - 1] + "\u2026"


def attack_label(output: dict[str, Any]) -> str:
    """``PGD (L∞)`` or ``random noise (L2)``."""
    attack = output.get("attack") or {}
    name = attack.get("name", "?")
    title = "random noise" if output.get("perturbation-type") == "random" or name == "noise" else str(name).upper()
    return f"{title} ({NORM_LABELS.get(attack.get('norm'), attack.get('norm', '?'))})"


def undefended(output: dict[str, Any]) -> dict[str, Any] | None:
    """The undefended model's curve of a defended evaluation, shaped as an output (same samples, same
    attack), so that ``rows``, ``series`` and the CSV read it like any other; ``None`` without defenses."""
    bare = output.get("undefended")
    if not isinstance(bare, dict) or not isinstance(bare.get("sec-curve"), dict):
        return None
    return {**{k: output[k] for k in ("n-samples", "attack", "perturbation-type") if k in output}, **bare}


def defense_label(output: dict[str, Any]) -> str:
    """``jpeg-compression (quality 75) then bit-depth (bits 3), attacked adaptively``; empty without defenses."""
    stages = [d for d in output.get("defenses") or [] if isinstance(d, dict)]
    if not stages:
        return ""
    skip = {"name", "random", "crossing"}
    parts = []
    for d in stages:
        params = ", ".join(f"{k} {v}" for k, v in d.items() if k not in skip)
        parts.append(f"{short(d.get('name'))} ({params})" if params else short(d.get("name")))
    adaptive = (output.get("defense-params") or {}).get("adaptive", True)
    how = "attacked adaptively" if adaptive else "attack transferred from the undefended model (not adaptive)"
    return f"{' then '.join(parts)}, {how}"


def x_label(norms: set[str]) -> str:
    if len(norms) == 1:
        norm = NORM_LABELS.get(next(iter(norms)), next(iter(norms)))
        return f"epsilon, {norm} norm (fraction of the input range)"
    return "epsilon (fraction of the input range; norms differ, see the legend)"


def curves(output: dict[str, Any], name: str, role: str = "attack") -> list[dict[str, Any]]:
    """The output's curve labelled ``name``; for a defended evaluation, ``name, defended`` and, after it,
    the same attack on the same samples without the defenses (``name, undefended model``)."""
    bare = undefended(output)
    if bare is None:
        return [series(output, name, role)]
    return [series(output, f"{name}, defended", role), series(bare, f"{name}, undefended model", "undefended")]


def series(output: dict[str, Any], label: str, role: str = "attack") -> dict[str, Any]:
    """A curve as the plots draw it: x, accuracy, its 95% band, a label and a role: attack, undefended
    (the bare model of the attack series before it) or baseline."""
    table = rows(output)
    return {
        "label": short(label, 2 * MAX_LABEL),
        "role": role,
        "x": [r["epsilon"] for r in table],
        "y": [r["accuracy"] for r in table],
        "lo": [r["accuracy-ci95"][0] for r in table],
        "hi": [r["accuracy-ci95"][1] for r in table],
    }
