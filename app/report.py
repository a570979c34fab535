"""The report: one self-contained HTML page about a finished evaluation, to read or attach to a ticket.

Everything is inline (CSS, the plot and the sample images as ``data:`` URIs): no request leaves
the page and it needs no JavaScript. The template (``app/web/templates/report.html``) is loaded
through this module's own Jinja2 environment, with autoescape on, so every user-given name
(model, dataset) is escaped. Parts an older output lacks (figures, checks, inspected samples)
are left out and named in a "not in this evaluation" list. Reading the job's inspection files
is bounded: the index's size, the number of samples shown, each image's size, and only plain
files inside the job's own directory that start with the PNG signature.
"""

from __future__ import annotations

import base64
import json
from pathlib import Path
from typing import Any

import jinja2

from . import results

TEMPLATES = Path(__file__).resolve().parent / "web" / "templates"
MAX_INDEX_BYTES = 4 * 2**20
MAX_IMAGE_BYTES = 2 * 2**20
MAX_SAMPLES_SHOWN = 12
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# Short topic names: the check's own message says what was found, in either direction.
CHECK_TITLES = {
    "curve-never-rises": "Curve never rises",
    "no-weaker-than-fgsm": "No weaker than FGSM",
    "falls-towards-chance": "Falls towards chance",
    "input-gradients": "Input gradients",
    "logits-not-probabilities": "Logits, not saturated probabilities",
    "deterministic-forward": "Deterministic model",
    "loss-converged": "Attack converged",
    "path-adversarial-kept": "Adversarial points kept",
    "gradient-free-attack": "Gradient-free attack",
}

_env = jinja2.Environment(
    loader=jinja2.FileSystemLoader(TEMPLATES),
    autoescape=True,  # every value is escaped unless marked safe; nothing user-given ever is
    undefined=jinja2.StrictUndefined,
    trim_blocks=True,
    lstrip_blocks=True,
)


def percent(value: Any, digits: int = 1) -> str:
    return "n/a" if not isinstance(value, (int, float)) else f"{100 * value:.{digits}f}%"


def interval(pair: Any) -> str:
    lo, hi = pair if isinstance(pair, (list, tuple)) and len(pair) == 2 else (None, None)
    return "" if lo is None or hi is None else f"{percent(lo)} to {percent(hi)}"


_env.filters["percent"] = percent
_env.filters["interval"] = interval


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64,{base64.b64encode(data).decode()}"


def _png(job_dir: Path, relative: str) -> str | None:
    """A PNG under the job's directory as a data: URI, or None when absent, too big, not a PNG, or a link
    out of the directory."""
    path = job_dir / relative
    try:
        if path.is_symlink() or not path.is_file() or not path.resolve().is_relative_to(job_dir.resolve()):
            return None
        if path.stat().st_size > MAX_IMAGE_BYTES:
            return None
        data = path.read_bytes()
    except OSError:
        return None
    return data_uri(data) if data.startswith(PNG_SIGNATURE) else None


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def read_inspection(job_dir: Path | None) -> list[dict[str, Any]] | None:
    """The inspected samples to show (at most ``MAX_SAMPLES_SHOWN``), each at one epsilon: the
    smallest at which the attack broke it, else the largest. None when the job has no inspection."""
    if job_dir is None:
        return None
    index = job_dir / "inspection" / "index.json"
    try:
        if index.is_symlink() or not index.is_file() or index.stat().st_size > MAX_INDEX_BYTES:
            return None
        doc = json.loads(index.read_bytes())
    except (OSError, ValueError):
        return None
    samples = doc.get("samples") if isinstance(doc, dict) else None
    if not isinstance(samples, list):
        return None
    shown = []
    for entry in samples[:MAX_SAMPLES_SHOWN]:
        if not isinstance(entry, dict) or not isinstance(entry.get("sample"), int) or isinstance(entry["sample"], bool):
            continue
        i = entry["sample"]
        eps = [e for e in entry.get("epsilons") or [] if isinstance(e, dict)]
        k = next((j for j, e in enumerate(eps) if j > 0 and e.get("adversarial") is True), len(eps) - 1)
        chosen = eps[k] if k > 0 else {}
        clean = entry.get("clean") if isinstance(entry.get("clean"), dict) else {}
        shown.append(
            {
                "sample": i,
                "index": entry.get("index"),
                "label": entry.get("label"),
                "clean": {"prediction": clean.get("prediction"), "confidence": _number(clean.get("confidence"))},
                "epsilon": _number(chosen.get("epsilon")),
                "broken": chosen.get("adversarial") is True,
                # Misclassified before any perturbation: counted as broken at every epsilon, but no attack's doing.
                "wrong-clean": clean.get("prediction") is not None and clean.get("prediction") != entry.get("label"),
                "adversarial": {"prediction": chosen.get("prediction"), "confidence": _number(chosen.get("confidence"))},
                "norm": _number(chosen.get("norm")),
                "images": _images(job_dir, i, k),
            }
        )
    return shown


IMAGES = ("clean", "adversarial", "difference", "attribution-clean", "attribution-adversarial")
AT_EPSILON = ("adversarial", "difference", "attribution-adversarial")  # files named <key>-<k>.png


def _images(job_dir: Path, i: int, k: int) -> dict[str, str | None]:
    """One sample's five images (data: URIs or None); those at epsilon index ``k`` exist for k >= 1."""
    images: dict[str, str | None] = {}
    for key in IMAGES:
        at_k = key in AT_EPSILON
        images[key] = None if at_k and k < 1 else _png(job_dir, f"inspection/{i}/{key}{f'-{k}' if at_k else ''}.png")
    return images


def _checks(output: dict[str, Any]) -> list[dict[str, Any]] | None:
    checks = output.get("checks")
    if not isinstance(checks, list):
        return None
    return [
        {
            "name": str(c.get("name")),
            "title": CHECK_TITLES.get(c.get("name"), str(c.get("name"))),
            "status": "warn" if c.get("status") == "warn" else "pass",
            "message": str(c.get("message", "")),
        }
        for c in checks
        if isinstance(c, dict)
    ]


def summary(output: dict[str, Any], names: dict[str, str], checks: list[dict[str, Any]] | None) -> list[str]:
    """The summary in words, a few sentences (plain text: the template escapes them)."""
    table = results.rows(output)
    attack = output.get("attack") or {}
    norm = results.NORM_LABELS.get(attack.get("norm"), attack.get("norm", "?"))
    random = output.get("perturbation-type") == "random"
    what = f"random noise of {norm} size epsilon (a baseline, not an attack)" if random else f"{results.attack_label(output)}"
    out = [f"The model {names['model']} was evaluated on {names['dataset']} ({output.get('n-samples', '?')} samples) "
           f"against {what}; epsilon is a fraction of the input range."]
    if table:
        clean = table[0]
        out.append(f"Clean accuracy is {percent(clean['accuracy'])} (95% interval {interval(clean['accuracy-ci95'])}).")
        steps = [f"{percent(r['accuracy'])} at epsilon {r['epsilon']:g}" for r in table[1:]]
        if steps:
            out.append(f"Under {'noise' if random else 'attack'}, accuracy is " + ", ".join(steps) + ".")
    bare = results.undefended(output)
    if bare is not None:
        out.append(f"These numbers are the defended model's: {results.defense_label(output)}.")
        steps = [f"{percent(r['accuracy'])} at epsilon {r['epsilon']:g}" for r in results.rows(bare)]
        out.append("Without the defenses, on the same samples and attack, accuracy is " + ", ".join(steps) + ".")
    value, level = output.get("sec-value"), output.get("sec-level")
    if isinstance(value, (int, float)):
        out.append(f"The security value (the normalized area under the curve) is {value:.3f}: a {level} level of security.")
    breaking = (output.get("figures") or {}).get("breaking-perturbation") if results.has_figures(output) else None
    if isinstance(breaking, dict) and isinstance(breaking.get("median"), (int, float)):
        out.append(
            f"The smallest perturbation that breaks a sample has a median of {breaking['median']:.4g} "
            f"(quartiles {breaking.get('q1', 0):.4g} to {breaking.get('q3', 0):.4g}, {breaking.get('count', '?')} samples, "
            f"{results.NORM_LABELS.get(breaking.get('norm'), breaking.get('norm'))} norm, {breaking.get('unit', '')})."
        )
    if checks is not None:
        warned = [c for c in checks if c["status"] == "warn"]
        if output.get("reliable") is False or warned:
            reasons = " ".join(c["message"] for c in warned)
            out.append(f"Reliability: {len(warned)} of {len(checks)} checks warn, so the curve may overstate the model's "
                       f"robustness; read the checks below before trusting it. {reasons}".rstrip())
        else:
            out.append(f"Reliability: all {len(checks)} checks pass; nothing suggests the curve overstates robustness.")
    return out


def render(
    output: dict[str, Any],
    names: dict[str, str],
    *,
    plot_png: bytes | None,
    job_dir: Path | None,
    record: dict[str, Any],
    baseline: dict[str, Any] | None = None,
) -> str:
    """The report's HTML."""
    checks = _checks(output)
    samples = read_inspection(job_dir)
    full = results.has_figures(output)
    missing = []
    if not full:
        missing.append("per-epsilon figures (measured 95% intervals, attack success rate, confidence, per-class "
                       "accuracy): this output predates them; the plot's band is estimated from accuracy and the sample count")
    if checks is None:
        missing.append("reliability checks: this output predates them")
    if not samples:
        missing.append("inspected samples (images, predictions, attribution maps): none were stored for this evaluation")
    return _env.get_template("report.html").render(
        job_id=output.get("job_id") or record.get("job_id"),
        names=names,
        attack_label=results.attack_label(output),
        attack=output.get("attack") or {},
        output=output,
        record=record,
        summary=summary(output, names, checks),
        rows=results.rows(output),
        defended=results.undefended(output) is not None,
        full=full,
        classes=results.classes(output),
        class_counts=(output.get("figures") or {}).get("class-counts") or [] if full else [],
        plot=data_uri(plot_png) if plot_png else None,
        checks=checks,
        reliable=output.get("reliable"),
        samples=samples or [],
        missing=missing,
        baseline=baseline,
    )
