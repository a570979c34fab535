"""Security evaluations: submit, list, status, output, delete."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from flask import Blueprint, jsonify, redirect, request, url_for

from .. import auth, schemas
from .. import queue as jobqueue
from ..exceptions import InvalidFileError, NotFoundError, QuotaExceededError, ServiceError, ValidationError
from ..extensions import get_queue, get_records, get_redis, get_settings, get_storage
from ..inspection import inspect_dataset, inspect_model
from ..records import STATUSES, TERMINAL
from .body import json_object
from .files import KINDS, owned_file

bp = Blueprint("evaluations", __name__, url_prefix="/api/security_evaluations")

UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
FIELD_KIND = {"trained-model": "model", "dataset": "dataset"}


def resolve_reference(field: str, ref: str) -> dict[str, Any]:
    """An uploaded id, or a file name inside the data directory, described and checked."""
    kind = FIELD_KIND[field]
    if re.fullmatch(r"[0-9a-f]{32}", ref) and get_records().file(kind, ref) is not None:
        meta = owned_file(kind, ref)
        return {"id": meta["id"], "sha256": meta["sha256"], "path": meta["blob"], "info": meta}
    storage = get_storage()
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
    try:
        info = inspect_model(path, allow_external_data=True) if kind == "model" else _scanned_dataset(path)
    except InvalidFileError as exc:
        raise ValidationError(f"{field}: {exc.message}", details={"field": field, "problem": exc.details}) from None
    return {"id": ref, "sha256": None, "path": str(path.relative_to(storage.root)), "info": info}


def _scanned_dataset(path: Path) -> dict[str, Any]:
    """A full scan (NaN, labels, value range), cached by path, size and mtime: files named
    in the data directory are re-checked only when they change."""
    st = path.stat()
    records = get_records()
    key = records.key("scan", hashlib.sha256(f"{path}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest())
    cached = records.redis.get(key)
    if cached:
        return json.loads(cached)
    info = inspect_dataset(path)
    records.redis.set(key, json.dumps(info), ex=7 * 24 * 3600)
    return info


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
