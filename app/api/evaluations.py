"""Security evaluations: submit, list, status, output, delete."""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, jsonify, redirect, request, url_for

from .. import auth, schemas, validation
from .. import queue as jobqueue
from ..exceptions import InvalidFileError, NotFoundError, QuotaExceededError, ServiceError, ValidationError
from ..extensions import get_queue, get_records, get_redis, get_settings, get_storage
from ..inspection import inspect_model
from ..records import STATUSES, TERMINAL
from .body import json_object
from .files import KINDS, owned_file

bp = Blueprint("evaluations", __name__, url_prefix="/api/security_evaluations")

UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
FIELD_KIND = {"trained-model": "model", "dataset": "dataset"}


@bp.errorhandler(validation.StillValidating)
def still_validating(exc: validation.StillValidating):
    response = jsonify(exc.to_dict())
    response.headers["Retry-After"] = str(exc.retry_after)
    return response, exc.status


def resolve_reference(field: str, ref: str) -> dict[str, Any]:
    """An uploaded id, or a file name inside the data directory, described and checked.

    An uploaded file must be ``ready`` (409 while a worker validates it, 422 once rejected);
    a named file gets the upload's checks (400 naming the field), its full scan cached by
    path, size and mtime (409 while a worker scans a big one)."""
    kind = FIELD_KIND[field]
    records = get_records()
    if re.fullmatch(r"[0-9a-f]{32}", ref) and records.file(kind, ref) is not None:
        meta = validation.require_ready(records, kind, owned_file(kind, ref), field)
        return {"id": meta["id"], "sha256": meta["sha256"], "path": meta["blob"], "info": meta}
    settings, storage = get_settings(), get_storage()
    try:
        path = storage.resolve_user_path(ref)
    except ServiceError as exc:
        raise ValidationError(f"{field}: {exc.message}", details={"field": field}) from None
    if not path.is_file():
        raise ValidationError(
            f"{field}: no uploaded {kind} with id {ref!r} and no file named {ref!r} in the data directory",
            details={"field": field},
        )
    suffixes, _ = KINDS[kind]
    if path.suffix.lower() not in suffixes:
        raise ValidationError(f"{field}: {kind} files must end in {' or '.join(suffixes)}", details={"field": field})
    if kind == "model" and path.stat().st_size > settings.max_upload_mb * 2**20:
        # Parsing the protobuf costs memory in proportion to its size: the upload limit applies.
        limit = settings.max_upload_mb
        raise ValidationError(f"{field}: the model file is larger than the {limit} MB limit", details={"field": field})
    relative = str(path.relative_to(storage.root))
    try:
        if kind == "model":
            info = inspect_model(path, allow_external_data=True)
        else:
            info = validation.scanned_path(records, get_queue(), path, relative)
    except validation.StillValidating as exc:
        exc.details = {"field": field, "status": "validating"}
        raise
    except InvalidFileError as exc:
        raise ValidationError(f"{field}: {exc.message}", details={"field": field, "problem": exc.details}) from None
    return {"id": ref, "sha256": None, "path": relative, "info": info}


def _check_quota() -> None:
    limit = get_settings().max_concurrent_jobs
    if limit <= 0:
        return
    records, me = get_records(), auth.tenant()
    active = sum(
        1 for rec in records.evaluations(records.active_ids()) if rec["owner"] == me and rec["job-status"] not in TERMINAL
    )
    if active >= limit:
        raise QuotaExceededError(f"at most {limit} unfinished evaluations per API key; {active} are queued or running")


def status_view(rec: dict[str, Any]) -> dict[str, Any]:
    view = {k: v for k, v in rec.items() if k not in ("owner", "resolved", "attempt")}
    view["links"] = {
        "self": url_for("evaluations.get_one", job_id=rec["job_id"], _external=True),
        "output": url_for("evaluations.output", job_id=rec["job_id"], _external=True),
    }
    return view


def owned_evaluation(job_id: str) -> dict[str, Any]:
    rec = get_records().evaluation(job_id) if UUID_RE.fullmatch(job_id) else None
    if rec is None:
        raise NotFoundError(f"no security evaluation with id {job_id!r}")
    auth.check_owner(rec["owner"], "security evaluation")
    return rec


@bp.post("")
def submit():
    body = json_object()
    settings = get_settings()
    req = schemas.evaluation_request(body, max_values=settings.max_perturbation_values)
    model = resolve_reference("trained-model", req["trained-model"])
    dataset = resolve_reference("dataset", req["dataset"])
    schemas.check_against_dataset(req, dataset["info"])
    schemas.check_against_model(model["info"], dataset["info"])
    _check_quota()
    resolved = {
        "model": {k: model[k] for k in ("id", "sha256", "path")},
        "dataset": {k: dataset[k] for k in ("id", "sha256", "path")},
        "n-classes": dataset["info"].get("n-classes"),
        "model-ends-with-softmax": model["info"].get("ends-with-softmax", False),
    }
    records = get_records()
    job_id = records.create_evaluation(req, auth.tenant(), resolved)
    try:
        jobqueue.enqueue_evaluation(get_queue(), job_id, settings.job_timeout)
    except Exception:
        records.delete_evaluation(job_id)
        raise
    location = url_for("evaluations.get_one", job_id=job_id, _external=True)
    response = jsonify({"job_id": job_id, "job-status": "queued", "links": {"self": location}})
    response.status_code = 202
    response.headers["Location"] = location
    return response


@bp.get("")
def list_all():
    wanted = request.args.get("status")
    if wanted is not None and wanted not in STATUSES:
        raise ValidationError(f"status: must be one of {list(STATUSES)}", details={"field": "status"})
    records, me = get_records(), auth.tenant()
    items = [
        status_view(rec)
        for rec in records.evaluations(records.evaluation_ids())
        if rec["owner"] == me and (not wanted or rec["job-status"] == wanted)
    ]
    return jsonify({"evaluations": items, "count": len(items)})


@bp.get("/<job_id>")
def get_one(job_id: str):
    return jsonify(status_view(owned_evaluation(job_id)))


@bp.get("/<job_id>/output")
def output(job_id: str):
    rec = owned_evaluation(job_id)
    if rec["job-status"] != "finished":
        return redirect(url_for("evaluations.get_one", job_id=job_id, _external=True), code=303)
    result = get_records().result(job_id)
    if result is None:
        raise NotFoundError("the evaluation finished but its output is missing")
    return jsonify(result)


@bp.delete("/<job_id>")
def delete(job_id: str):
    rec = owned_evaluation(job_id)
    records = get_records()
    # Delete the record first: a running job checks for it and stops writing.
    records.delete_evaluation(job_id)
    jobqueue.stop_job(get_redis(), job_id)
    get_storage().remove_job_dir(job_id)
    return jsonify({"job_id": job_id, "deleted": True, "was": rec["job-status"]})
