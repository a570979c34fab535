"""Security evaluations: submit, list, status, output, delete."""

from __future__ import annotations

import re
from typing import Any

from flask import Blueprint, jsonify, request, url_for

from .. import auth, plugin_catalog, schemas, shards, validation
from .. import queue as jobqueue
from ..exceptions import InvalidFileError, NotFoundError, ServiceError, ValidationError
from ..extensions import get_queue, get_records, get_redis, get_settings, get_storage
from ..inspection import inspect_model
from ..records import STATUSES
from ..storage import file_scope
from .body import json_object
from .files import FILE_ID_RE, KINDS, owned_file
from .listing import page_args, page_body

bp = Blueprint("evaluations", __name__, url_prefix="/api/security_evaluations")

UUID_RE = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
FIELD_KIND = {"trained-model": "model", "dataset": "dataset"}
SUMMARY_FIELDS = ("sec-curve", "clean-accuracy", "sec-value", "sec-level", "n-samples", "reliable")
MAX_BULK_DELETE = 100  # evaluations one bulk DELETE removes; "more": true asks for another call
BULK_PAGES = 5  # status-filtered pages (2,000 index entries each) one bulk DELETE examines per status
EVALUATION = "security-evaluation"


@bp.errorhandler(validation.StillValidating)
def still_validating(exc: validation.StillValidating):
    response = jsonify(exc.to_dict())
    response.headers["Retry-After"] = str(exc.retry_after)
    return response, exc.status


def resolve_reference(field: str, ref: str) -> dict[str, Any]:
    """An uploaded id, or a file name under ``files/`` (the caller's own folder with API keys),
    described and checked. ``kind`` in the answer tells the worker how to find it again.

    An uploaded file must be ``ready`` (409 while a worker validates it, 422 once rejected);
    a named file gets the upload's checks (400 naming the field), its full scan cached by
    path, size and mtime (409 while a worker scans a big one)."""
    kind = FIELD_KIND[field]
    records = get_records()
    if FILE_ID_RE.fullmatch(ref):  # an id, never a path (no file under files/ can be named like one)
        if records.file(kind, ref) is None:
            raise ValidationError(f"{field}: no uploaded {kind} with id {ref!r}", details={"field": field})
        meta = validation.require_ready(records, kind, owned_file(kind, ref), field)
        return {"kind": "upload", "id": meta["id"], "sha256": meta["sha256"], "path": meta["blob"], "info": meta}
    settings, storage = get_settings(), get_storage()
    if not settings.file_references:
        raise ValidationError(
            f"{field}: file references are disabled on this service (FILE_REFERENCES=off): upload the {kind} and pass its id",
            details={"field": field},
        )
    scope = file_scope(auth.tenant(), bool(settings.api_keys))
    where = storage.files_dir(scope).relative_to(storage.root).as_posix() + "/"
    # Outside the allowed folder and missing answer alike: no probing which files exist elsewhere.
    missing = ValidationError(
        f"{field}: no uploaded {kind} with id {ref!r} and no file {ref!r} inside {where} "
        "(files named in requests must lie there; or upload the file and pass its id)",
        details={"field": field, "allowed": where},
    )
    try:
        path = storage.resolve_named_file(ref, scope)
    except ServiceError as exc:
        if isinstance(exc.details, dict) and "allowed" in exc.details:
            raise missing from None
        raise ValidationError(f"{field}: {exc.message}", details={"field": field}) from None
    if not path.is_file():
        raise missing
    suffixes, _ = KINDS[kind]
    if path.suffix.lower() not in suffixes:
        raise ValidationError(f"{field}: {kind} files must end in {' or '.join(suffixes)}", details={"field": field})
    if kind == "model" and path.stat().st_size > settings.max_upload_mb * 2**20:
        # Parsing the protobuf costs memory in proportion to its size: the upload limit applies.
        limit = settings.max_upload_mb
        raise ValidationError(f"{field}: the model file is larger than the {limit} MB limit", details={"field": field})
    relative = path.relative_to(storage.root).as_posix()
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
    return {"kind": "file", "id": ref, "sha256": None, "path": relative, "info": info}


def status_view(rec: dict[str, Any]) -> dict[str, Any]:
    rec = shards.overview(get_records(), rec)
    view = {k: v for k, v in rec.items() if k not in ("owner", "resolved", "attempt")}
    view["kind"] = kind_of(rec)
    note = plugin_catalog.waiting_note(get_redis(), get_settings().key_prefix, rec)
    if note:
        view["waiting"] = note
    view["links"] = {
        "self": url_for("evaluations.get_one", job_id=rec["job_id"], _external=True),
        "output": url_for("evaluations.output", job_id=rec["job_id"], _external=True),
    }
    return view


def kind_of(rec: dict[str, Any]) -> str:
    """``security-evaluation``, or ``adversarial-example`` for one made by ``POST /api/adversarial_examples``."""
    return rec["resolved"].get("kind", EVALUATION)


def owned_evaluation(job_id: str) -> dict[str, Any]:
    rec = get_records().evaluation(job_id) if UUID_RE.fullmatch(job_id) else None
    if rec is None or rec.get("parent"):  # a shard is part of its parent, never addressed alone
        raise NotFoundError(f"no security evaluation with id {job_id!r}")
    auth.check_owner(rec["owner"], "security evaluation")
    return rec


@bp.post("")
def submit():
    settings = get_settings()
    body = json_object()
    plugins = plugin_catalog.for_request(get_redis(), settings.key_prefix, body)  # only the JSON a live worker published
    req = schemas.evaluation_request(
        body, max_values=settings.max_perturbation_values, max_shards=settings.max_shards, plugins=plugins
    )
    job_id = queue_evaluation(req)
    location = url_for("evaluations.get_one", job_id=job_id, _external=True)
    response = jsonify({"job_id": job_id, "job-status": "queued", "links": {"self": location}})
    response.status_code = 202
    response.headers["Location"] = location
    return response


def queue_evaluation(req: dict[str, Any], kind: str = EVALUATION) -> str:
    """Bind a validated request to its model and dataset, store it and queue it (sharded when it
    should be); returns its id. ``kind`` marks the record (an adversarial example is an evaluation
    of one sample, run by the same job)."""
    settings = get_settings()
    model = resolve_reference("trained-model", req["trained-model"])
    dataset = resolve_reference("dataset", req["dataset"])
    req = schemas.bind_to_files(req, model["info"], dataset["info"])
    resolved = {
        "model": {k: model[k] for k in ("kind", "id", "sha256", "path")},
        "dataset": {k: dataset[k] for k in ("kind", "id", "sha256", "path")},
        "n-classes": dataset["info"].get("n-classes"),
        "model-ends-with-softmax": model["info"].get("ends-with-softmax", False),
        **({"kind": kind} if kind != EVALUATION else {}),
    }
    records = get_records()
    ranges = shards.plan(req, shards.selection_size(req, dataset["info"]["n-samples"]), settings.max_shards)
    req = {**req, "shards": len(ranges)}  # the stored request says how many ran
    # Counted and created in one atomic step: concurrent submits cannot exceed the limit (429).
    if len(ranges) > 1:
        limits = {"limit": settings.max_concurrent_jobs, "timeout": settings.job_timeout}
        job_id = shards.submit(records, get_queue(), req, auth.tenant(), resolved, ranges, **limits)
    else:
        job_id = records.create_evaluation(req, auth.tenant(), resolved, limit=settings.max_concurrent_jobs)
        try:
            jobqueue.enqueue_evaluation(get_queue(), job_id, settings.job_timeout, req["attack"])
        except Exception:
            records.delete_evaluation(job_id)
            raise
    return job_id


@bp.get("")
def list_all():
    """The caller's evaluations, oldest first, a page at a time (``limit``, ``cursor``);
    ``include=summary`` adds each finished one's curve and headline figures (the web UI's thumbnails)."""
    wanted = request.args.get("status")
    if wanted is not None and wanted not in STATUSES:
        raise ValidationError(f"status: must be one of {list(STATUSES)}", details={"field": "status"})
    include = request.args.get("include")
    if include is not None and include != "summary":
        raise ValidationError("include: must be 'summary' or absent", details={"field": "include"})
    limit, after = page_args(UUID_RE)
    records = get_records()
    recs, cursor = records.evaluation_page(auth.tenant(), limit, after, wanted)
    views = [status_view(rec) for rec in recs]
    if include:
        outputs = records.results([v["job_id"] for v in views if v["job-status"] == "finished"])
        for view in views:
            if view["job_id"] in outputs:
                view["summary"] = summary(outputs[view["job_id"]])
    return jsonify(page_body("evaluations", views, cursor))


def summary(output: dict[str, Any]) -> dict[str, Any]:
    """The headline of an output: enough to draw a thumbnail curve and rank a row, a few hundred bytes."""
    return {k: output[k] for k in SUMMARY_FIELDS if k in output}


@bp.get("/<job_id>")
def get_one(job_id: str):
    return jsonify(status_view(owned_evaluation(job_id)))


@bp.get("/<job_id>/output")
def output(job_id: str):
    rec = owned_evaluation(job_id)
    if rec["job-status"] != "finished":  # a JSON body too: every answer of the API is JSON
        status_url = url_for("evaluations.get_one", job_id=job_id, _external=True)
        body = {"job_id": job_id, "job-status": rec["job-status"], "status": status_url,
                "message": f"evaluation {job_id} is {rec['job-status']}, not finished: its output is not there yet"}
        return jsonify(body), 303, {"Location": status_url}
    result = get_records().result(job_id)
    if result is None:
        raise NotFoundError("the evaluation finished but its output is missing")
    return jsonify(result)


@bp.delete("/<job_id>")
def delete(job_id: str):
    rec = owned_evaluation(job_id)
    remove(rec)
    return jsonify({"job_id": job_id, "deleted": True, "was": rec["job-status"]})


def remove(rec: dict[str, Any]) -> None:
    """Delete one evaluation: a queued one is canceled, a running one stopped, then its files go."""
    job_id, records = rec["job_id"], get_records()
    # Delete the record first: a running job checks for it and stops writing (a merge finds no parent).
    records.delete_evaluation(job_id)
    if rec.get("shards"):
        shards.delete(records, get_storage(), rec)
    jobqueue.stop_job(get_redis(), job_id)
    get_storage().remove_job_dir(job_id)


@bp.delete("")
def delete_many():
    """``?status=a[,b]`` (required): delete up to ``MAX_BULK_DELETE`` of the caller's evaluations in those
    statuses, each exactly as ``DELETE /<job_id>`` does; ``more`` says whether to call again."""
    raw = request.args.get("status")
    wanted = [s.strip() for s in (raw or "").split(",") if s.strip()]
    unknown = [s for s in wanted if s not in STATUSES]
    if not wanted or unknown:
        problem = f"unknown status {unknown[0][:40]!r}" if unknown else "required"
        raise ValidationError(
            f"status: {problem}; give one or more of {list(STATUSES)}, comma separated", details={"field": "status"}
        )
    records, removed, more = get_records(), [], False
    for status in dict.fromkeys(wanted):
        cursor, pages = None, 0
        while len(removed) < MAX_BULK_DELETE:
            recs, cursor = records.evaluation_page(auth.tenant(), MAX_BULK_DELETE - len(removed), cursor, status)
            for rec in recs:
                remove(rec)
                removed.append({"job_id": rec["job_id"], "was": rec["job-status"]})
            pages += 1
            if cursor is None or pages == BULK_PAGES:
                break
        more = more or cursor is not None or len(removed) >= MAX_BULK_DELETE
        if len(removed) >= MAX_BULK_DELETE:
            break
    return jsonify({"deleted": len(removed), "ids": [r["job_id"] for r in removed], "evaluations": removed, "more": more})
