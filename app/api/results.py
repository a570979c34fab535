"""A finished evaluation in the formats people read: CSV, plots (PNG, SVG), the HTML report,
plots that compare several evaluations, and the attacks' catalogue."""

from __future__ import annotations

from typing import Any

from flask import Blueprint, Response, jsonify, request

from .. import attack_catalog, auth, defense_catalog, plots, plugin_catalog, report, results
from ..exceptions import BackendUnavailableError, ConflictError, NotFoundError, ValidationError
from ..extensions import get_records, get_redis, get_settings, get_storage
from .evaluations import UUID_RE, owned_evaluation
from .files import FILE_ID_RE

bp = Blueprint("results", __name__, url_prefix="/api")

MAX_COMPARED = 8  # evaluations on one comparison plot
# Served documents may be opened directly in a browser: nothing in them may load or run anything.
REPORT_CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'"
SVG_CSP = "default-src 'none'; style-src 'unsafe-inline'"


def finished(job_id: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The caller's evaluation and its output; 404 when unknown, 409 until it has finished."""
    rec = owned_evaluation(job_id)
    if rec["job-status"] != "finished":
        raise ConflictError(
            f"evaluation {job_id} is {rec['job-status']}: its results exist once it has finished",
            details={"job_id": job_id, "job-status": rec["job-status"]},
        )
    output = get_records().result(job_id)
    if output is None:
        raise NotFoundError("the evaluation finished but its output is missing")
    return rec, output


def names(rec: dict[str, Any], output: dict[str, Any]) -> dict[str, str]:
    """The model's and the dataset's names as the user knows them: an upload's file name, else the path."""
    out = {}
    for field, kind in (("model", "model"), ("dataset", "dataset")):
        ref = output.get(field) or (rec.get("resolved") or {}).get(field) or {}
        meta = get_records().file(kind, ref["id"]) if FILE_ID_RE.fullmatch(str(ref.get("id", ""))) else None
        if meta is None or meta.get("owner", auth.PUBLIC) != auth.tenant():
            meta = {}
        out[field] = results.short(meta.get("name") or ref.get("id") or "?")
    return out


def job_dir(job_id: str):
    path = get_storage().job_dir(job_id)
    return path if path.is_dir() else None


def baseline_of(job_id: str, output: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]] | None:
    """``?baseline=<id>``: the caller's finished random-noise evaluation of the same model and dataset."""
    other = request.args.get("baseline")
    if other is None:
        return None
    if not UUID_RE.fullmatch(other):
        raise ValidationError("baseline: expected the id of a random-noise evaluation", details={"field": "baseline"})
    rec, base = finished(other)
    if base.get("perturbation-type") != "random":
        raise ValidationError(
            f"baseline: evaluation {other} is not a random-noise evaluation (submit one with \"perturbation-type\": \"random\")",
            details={"field": "baseline"},
        )
    for field in ("model", "dataset"):
        mine, theirs = output.get(field) or {}, base.get(field) or {}
        if (mine.get("sha256") or mine.get("id")) != (theirs.get("sha256") or theirs.get("id")):
            raise ValidationError(
                f"baseline: evaluation {other} ran on another {field} than evaluation {job_id}", details={"field": "baseline"}
            )
    return rec, base


def job_spec(job_id: str, rec: dict[str, Any], output: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any] | None]:
    """What one evaluation's plot shows (title, axis, its curve and the baseline's), and the baseline's record."""
    label = names(rec, output)
    series = results.curves(output, f"{results.attack_label(output)} accuracy")
    norms = {(output.get("attack") or {}).get("norm", "?")}
    base = baseline_of(job_id, output)
    if base is not None:
        series.append(results.series(base[1], f"{results.attack_label(base[1])} baseline", role="baseline"))
        norms.add((base[1].get("attack") or {}).get("norm", "?"))
    title = f"{label['model']} on {label['dataset']}: {results.attack_label(output)}, {output.get('n-samples', '?')} samples"
    if defenses := results.defense_label(output):
        title += f"\nwith {defenses}"
    return {"title": title, "xlabel": results.x_label(norms), "series": series}, (base[0] if base else None)


def _format(default: str = "png") -> str:
    fmt = request.args.get("format", default)
    if fmt not in plots.FORMATS:
        raise ValidationError(f"format: must be one of {list(plots.FORMATS)}", details={"field": "format"})
    return fmt


def image(data: bytes, fmt: str, name: str) -> Response:
    response = Response(data, mimetype=plots.FORMATS[fmt])
    response.headers["Content-Disposition"] = f'inline; filename="{name}.{fmt}"'
    response.headers["X-Content-Type-Options"] = "nosniff"
    if fmt == "svg":
        response.headers["Content-Security-Policy"] = SVG_CSP
    return response


@bp.get("/security_evaluations/<job_id>/output/csv")
def output_csv(job_id: str):
    _, output = finished(job_id)
    response = Response(results.csv_text(output), mimetype="text/csv")
    response.headers["Content-Disposition"] = f'attachment; filename="secev-{job_id}.csv"'
    return response


@bp.get("/security_evaluations/<job_id>/plot.<fmt>")
def plot(job_id: str, fmt: str):
    if fmt not in plots.FORMATS:
        raise NotFoundError(f"no plot format {fmt[:16]!r}; use plot.png or plot.svg")
    rec, output = finished(job_id)
    spec, _ = job_spec(job_id, rec, output)
    return image(plots.cached(job_dir(job_id), spec, fmt), fmt, f"secev-{job_id}")


@bp.get("/security_evaluations/<job_id>/report")
def report_page(job_id: str):
    rec, output = finished(job_id)
    spec, base = job_spec(job_id, rec, output)
    folder = job_dir(job_id)
    try:
        png = plots.cached(folder, spec, "png")
    except BackendUnavailableError:
        png = None  # the report says the plot could not be drawn; its tables carry the same numbers
    html = report.render(output, names(rec, output), plot_png=png, job_dir=folder, record=rec, baseline=base)
    response = Response(html, mimetype="text/html")
    response.headers["Content-Security-Policy"] = REPORT_CSP
    response.headers["X-Content-Type-Options"] = "nosniff"
    if request.args.get("download") == "1":
        response.headers["Content-Disposition"] = f'attachment; filename="secev-report-{job_id}.html"'
    return response


def compared_ids() -> list[str]:
    """``?jobs=a,b,...``: 1 to MAX_COMPARED evaluation ids, duplicates dropped (400 naming the problem)."""
    raw = request.args.get("jobs")
    if raw is None or not raw.strip():
        raise ValidationError("jobs: required, a comma-separated list of evaluation ids", details={"field": "jobs"})
    ids = list(dict.fromkeys(part.strip() for part in raw.split(",") if part.strip()))
    if len(ids) > MAX_COMPARED:
        raise ValidationError(f"jobs: at most {MAX_COMPARED} evaluations on one plot, got {len(ids)}", details={"field": "jobs"})
    bad = [i for i in ids if not UUID_RE.fullmatch(i)]
    if bad or not ids:
        shown = results.short(bad[0] if bad else raw, 40)
        raise ValidationError(f"jobs: {shown!r} is not an evaluation id", details={"field": "jobs"})
    return ids


@bp.get("/plots")
def compare():
    fmt = _format()
    ids = compared_ids()
    series, norms = [], set()
    for job_id in ids:
        rec, output = finished(job_id)
        label = names(rec, output)
        norms.add((output.get("attack") or {}).get("norm", "?"))
        role = "baseline" if output.get("perturbation-type") == "random" else "attack"
        series += results.curves(output, f"{label['model']} \u00b7 {results.attack_label(output)} \u00b7 {job_id[:8]}", role)
    spec = {"title": f"{len(ids)} evaluation{'s' if len(ids) > 1 else ''} compared", "xlabel": results.x_label(norms),
            "series": series}
    return image(plots.render(spec, fmt), fmt, "secev-comparison")


def with_plugins(perturbation_type: str | None = None) -> list[dict[str, Any]]:
    """The built-in attacks, then the plugins live workers offer (``plugin: true``, ``workers``)."""
    listed = [{**a, "plugin": False} for a in attack_catalog.describe(perturbation_type)]
    if perturbation_type in (None, "max-norm"):
        listed += sorted(plugin_catalog.offered(get_redis(), get_settings().key_prefix).values(), key=lambda a: a["name"])
    return listed


@bp.get("/attacks")
def attacks():
    return jsonify(
        {
            "attacks": with_plugins(),
            "perturbation-types": list(attack_catalog.PERTURBATION_TYPES),
            "defenses": defense_catalog.describe(),
        }
    )


@bp.get("/attacks/<perturbation_type>")
def attacks_of(perturbation_type: str):
    if perturbation_type not in attack_catalog.PERTURBATION_TYPES:
        raise NotFoundError(
            f"no perturbation type {results.short(perturbation_type, 40)!r}; known: {list(attack_catalog.PERTURBATION_TYPES)}",
            details={"perturbation-types": list(attack_catalog.PERTURBATION_TYPES)},
        )
    return jsonify({"perturbation-type": perturbation_type, "attacks": with_plugins(perturbation_type)})
