"""Adversarial examples: one dataset sample attacked at a few budgets, as images.

``POST /api/adversarial_examples`` takes a model, a dataset, a sample ``index`` and budgets
(``perturbation-values``; optional attack, norm, parameters...) and queues an evaluation of that
one sample with ``inspect-samples`` 1, marked ``kind: adversarial-example``: the same job, engine
and inspection as any evaluation, so it also appears in ``GET /api/security_evaluations`` (with its
``kind``) and counts towards ``MAX_CONCURRENT_JOBS``. ``GET …/<id>`` gives its status and, once
finished, per epsilon the prediction, confidences, perturbation norm, whether it is adversarial
and its images' URLs; ``GET …/<id>/<name>.png`` the images; ``DELETE …/<id>`` removes it.
"""

from __future__ import annotations

from typing import Any

from flask import Blueprint, jsonify, url_for

from .. import plugin_catalog, samples, schemas
from ..exceptions import NotFoundError, ValidationError
from ..extensions import get_records, get_redis, get_settings, get_storage
from . import evaluations
from .body import json_object
from .samples import finished_index, linked, png_response

bp = Blueprint("examples", __name__, url_prefix="/api/adversarial_examples")

KIND = "adversarial-example"
FIELDS = (
    "trained-model",
    "dataset",
    "index",
    "perturbation-values",
    "perturbation-type",
    "attack",
    "norm",
    "attack-params",
    "preprocessing",
    "input-bounds",
    "input-layout",
    "output-index",
    "seed",
)
# What the evaluation of one sample fixes: that sample, inspected, in one job.
FIXED = {"inspect-samples": 1, "shards": 1, "evaluation-mode": "complete"}


def example_request(body: dict[str, Any]) -> dict[str, Any]:
    """The evaluation request of an adversarial example (400 naming the field, ``index`` included)."""
    unknown = sorted(set(body) - set(FIELDS))
    if unknown:
        shown = f"{unknown[:5]!r}"[:120]
        raise ValidationError(f"unknown fields {shown}", details={"field": unknown[0][:80], "accepted": list(FIELDS)})
    if "index" not in body:
        raise ValidationError("index: required: the position of the sample in the dataset", details={"field": "index"})
    index = schemas.sample_index("index", body["index"])
    settings = get_settings()
    fields = {k: v for k, v in body.items() if k != "index"}
    plugins = plugin_catalog.for_request(get_redis(), settings.key_prefix, fields)  # a plugin attack, as in a submit
    return schemas.evaluation_request(
        {**fields, **FIXED, "indexes": [index]}, max_values=settings.max_perturbation_values, plugins=plugins
    )


def owned_example(job_id: str) -> dict[str, Any]:
    rec = evaluations.owned_evaluation(job_id)
    if evaluations.kind_of(rec) != KIND:
        raise NotFoundError(f"no adversarial example with id {job_id!r}")
    return rec


@bp.post("")
def create():
    req = example_request(json_object())
    try:
        job_id = evaluations.queue_evaluation(req, KIND)
    except ValidationError as exc:
        if isinstance(exc.details, dict) and exc.details.get("field") == "indexes":
            raise ValidationError(exc.message.replace("indexes:", "index:", 1), details={"field": "index"}) from None
        raise
    location = url_for("examples.get_one", job_id=job_id, _external=True)
    response = jsonify({"job_id": job_id, "job-status": "queued", "kind": KIND, "links": {"self": location}})
    response.status_code = 202
    response.headers["Location"] = location
    return response


@bp.get("/<job_id>")
def get_one(job_id: str):
    rec = owned_example(job_id)
    req = rec["request"]
    view: dict[str, Any] = {
        "job_id": job_id,
        "kind": KIND,
        "job-status": rec["job-status"],
        "progress": rec["progress"],
        **{name: rec[name] for name in ("created_at", "started_at", "ended_at")},
        "request": {**{k: req[k] for k in FIELDS if k in req}, "index": req["indexes"][0]},
        "links": {
            "self": url_for("examples.get_one", job_id=job_id, _external=True),
            "evaluation": url_for("evaluations.get_one", job_id=job_id, _external=True),
        },
    }
    for name in ("error", "details"):
        if name in rec:
            view[name] = rec[name]
    if rec["job-status"] == "finished":
        view["output"] = example_output(rec)
    return jsonify(view)


def example_output(rec: dict[str, Any]) -> dict[str, Any]:
    """The finished example: its sample from the inspection, with image URLs, and the attack that ran."""
    result = get_records().result(rec["job_id"]) or {}
    out: dict[str, Any] = {"attack": result.get("attack"), "norm-unit": "input units (as epsilon-absolute)"}
    try:
        sample = finished_index(rec)["samples"][0]
    except (NotFoundError, IndexError):
        return {**out, "error": (result.get("inspection") or {}).get("error") or "the example's images are missing"}

    def url(name: str) -> str:
        return url_for("examples.image", job_id=rec["job_id"], name=name, _external=True)

    shown = linked(sample, url)
    return {**out, **{k: shown[k] for k in ("index", "label", "clean", "epsilons", "links")}}


@bp.get("/<job_id>/<name>.png")
def image(job_id: str, name: str):
    rec = owned_example(job_id)
    path = samples.image_path(get_storage().job_dir(rec["job_id"]), "0", name)
    if path is None:
        raise NotFoundError(
            f"no image {name[:60]!r} of this example",
            details={"names": "clean, attribution-clean, adversarial-<k>, difference-<k>, attribution-adversarial-<k>"},
        )
    return png_response(path)


@bp.delete("/<job_id>")
def delete(job_id: str):
    owned_example(job_id)
    return evaluations.delete(job_id)
