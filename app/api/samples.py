"""Per-sample inspection of a finished evaluation: the samples' index and their PNG images.

``GET /api/security_evaluations/<id>/samples`` (the index, with image URLs), ``…/samples/<i>``
(one sample) and ``…/samples/<i>/<name>.png``. Names are checked against the inspection's own
patterns (``app.samples``) before any path is formed; anything else is a 404 JSON. Another
tenant's evaluation answers exactly like a missing one.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flask import Blueprint, Response, jsonify

from .. import samples
from ..exceptions import ConflictError, NotFoundError
from ..extensions import get_storage
from .evaluations import owned_evaluation

bp = Blueprint("samples", __name__, url_prefix="/api/security_evaluations")

CACHE = "private, max-age=3600"  # a finished job's images never change; they are the tenant's own


def finished_index(rec: dict[str, Any]) -> dict[str, Any]:
    """The inspection index of a finished evaluation, or the 409/404 saying why there is none."""
    if rec["job-status"] != "finished":
        raise ConflictError(
            f"the evaluation is {rec['job-status']}: its samples are inspected when it finishes",
            details={"job-status": rec["job-status"]},
        )
    index = samples.read_index(get_storage().job_dir(rec["job_id"]))
    if index is None:
        raise NotFoundError(
            "this evaluation has no per-sample inspection (it ran before inspection existed, or the inspection "
            "failed: its output's inspection.error says why)"
        )
    return index


def linked(sample: dict[str, Any], url: Callable[[str], str], self_url: str | None = None) -> dict[str, Any]:
    """A sample of the index with the URLs of its images (``url(name)``): the clean ones, and per epsilon
    its adversarial, difference and attribution (epsilon 0 shows the clean image)."""
    epsilons = []
    for k, entry in enumerate(sample["epsilons"]):
        names = ("adversarial", "difference", "attribution-adversarial")
        if k == 0:
            urls = {"adversarial": url("clean"), "difference": None, "attribution": url("attribution-clean")}
        else:
            urls = dict(zip(("adversarial", "difference", "attribution"), (url(f"{n}-{k}") for n in names)))
        epsilons.append({**entry, "images": urls})
    links = {"clean": url("clean"), "attribution-clean": url("attribution-clean")}
    if self_url:
        links["self"] = self_url
    return {**sample, "epsilons": epsilons, "links": links}


def png_response(path) -> Response:
    response = Response(path.read_bytes(), mimetype="image/png")
    response.headers["Cache-Control"] = CACHE
    return response


def _urls(job_id: str, sample: int) -> tuple[Callable[[str], str], str]:
    from flask import url_for

    def url(name: str) -> str:
        return url_for("samples.image", job_id=job_id, sample=str(sample), name=name, _external=True)

    return url, url_for("samples.one", job_id=job_id, sample=str(sample), _external=True)


@bp.get("/<job_id>/samples")
def index(job_id: str):
    rec = owned_evaluation(job_id)
    found = finished_index(rec)
    items = [linked(s, *_urls(job_id, s["sample"])) for s in found["samples"]]
    return jsonify({**found, "job_id": job_id, "count": len(items), "limit": samples.MAX_SAMPLES, "samples": items})


@bp.get("/<job_id>/samples/<sample>")
def one(job_id: str, sample: str):
    rec = owned_evaluation(job_id)
    found = finished_index(rec)
    if samples.SAMPLE_RE.fullmatch(sample):
        for item in found["samples"]:
            if item["sample"] == int(sample):
                return jsonify(linked(item, *_urls(job_id, item["sample"])))
    inspected = [s["sample"] for s in found["samples"]]
    raise NotFoundError(f"no inspected sample {sample[:40]!r}; inspected: {inspected}", details={"samples": inspected})


@bp.get("/<job_id>/samples/<sample>/<name>.png")
def image(job_id: str, sample: str, name: str):
    rec = owned_evaluation(job_id)
    path = samples.image_path(get_storage().job_dir(rec["job_id"]), sample, name)
    if path is None:
        raise NotFoundError(
            f"no image {name[:60]!r} of sample {sample[:40]!r}",
            details={"names": "clean, attribution-clean, adversarial-<k>, difference-<k>, attribution-adversarial-<k>"},
        )
    return png_response(path)
