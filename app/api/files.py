"""Models and datasets: upload (validated, content-addressed) and listing.

Every check an upload gets in the request is bounded (see ``app.inspection``). A dataset
too big to scan inline is stored ``validating`` and answered 202; a worker finishes
the scan (``app.validation``) and the record becomes ``ready`` or ``rejected``. Every
model is stored ``verifying`` and answered 202; a worker converts it and compares it with
onnxruntime, and the record becomes ``ready`` or ``unsupported``. A model
with external data comes with its data file(s) in the field ``external-data``, or all in
one ``.zip`` (see ``app.bundles``).
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flask import Blueprint, jsonify, request, url_for

from .. import auth, bundles, inspection, validation
from ..exceptions import InvalidFileError, NotFoundError, PayloadTooLargeError, ValidationError
from ..extensions import get_queue, get_records, get_settings, get_storage
from ..records import now
from .listing import page_args, page_body

bp = Blueprint("files", __name__, url_prefix="/api")

FILE_ID_RE = re.compile(r"[0-9a-f]{32}")


KINDS: dict[str, tuple[tuple[str, ...], Callable[[Path], dict[str, Any]]]] = {
    "model": ((".onnx",), inspection.inspect_model),
    "dataset": ((".h5", ".hdf5"), validation.inspect_inline),
}


def safe_name(filename: str) -> str:
    """A display name only: the stored path never derives from it."""
    base = filename.replace("\\", "/").rsplit("/", 1)[-1]
    cleaned = re.sub(r"[^A-Za-z0-9._-]", "_", base)[:128].lstrip(".")
    return cleaned or "upload"


def public_view(kind: str, meta: dict[str, Any]) -> dict[str, Any]:
    """What a user sees of a file record, its validation status settled."""
    meta = validation.current_file(get_records(), kind, meta)
    return {k: v for k, v in meta.items() if k not in ("owner", "blob")}


def _store(kind: str, upload: Any, suffix: str, data: list[Any]) -> tuple[dict[str, Any], str, int, Path]:
    """Check and store one upload; returns (inspection, sha256, size, stored path)."""
    settings, storage = get_settings(), get_storage()
    max_bytes = settings.max_upload_mb * 2**20
    if suffix == ".zip":
        if data:
            raise ValidationError("send either a .zip or the field 'external-data', not both", details={"field": "external-data"})
        return bundles.from_zip(storage, upload, max_bytes)
    if data:
        return bundles.from_fields(storage, upload, data, max_bytes)
    try:
        tmp, sha256, size = storage.save_upload(upload.stream, suffix, max_bytes)
    except ValueError as exc:
        raise PayloadTooLargeError(str(exc), details={"field": "file", "limit-mb": settings.max_upload_mb}) from None
    try:
        if size == 0:
            raise InvalidFileError("the uploaded file is empty")
        info = KINDS[kind][1](tmp)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return info, sha256, size, storage.commit_upload(tmp, sha256, suffix)


def _upload(kind: str):
    suffixes = KINDS[kind][0] + ((".zip",) if kind == "model" else ())
    _refuse_other_parts(kind)
    upload = request.files.get("file")
    # A browser sends an unselected file input as a part without a file name: not a data file.
    data = [f for f in request.files.getlist("external-data") if f.filename]
    if data and kind != "model":
        raise ValidationError("the field 'external-data' is only for models", details={"field": "external-data"})
    if upload is None and data:
        raise ValidationError("the external data came without its graph: send the .onnx file in the field 'file'")
    if upload is None:
        raise ValidationError("multipart field 'file' is required", details={"field": "file"})
    name = safe_name(upload.filename or "")
    suffix = Path(name).suffix.lower()
    if suffix not in suffixes:
        raise ValidationError(f"{kind} files must end in {' or '.join(suffixes)}, got {name!r}", details={"field": "file"})
    storage = get_storage()
    info, sha256, size, blob = _store(kind, upload, suffix, data)
    # A model always needs a worker (conversion needs torch); a dataset only past the inline budget.
    ready = kind == "dataset" and inspection.is_scanned(info)
    meta = {
        "id": uuid.uuid4().hex,
        "name": name,
        "sha256": sha256,
        "size": size,
        "created_at": now(),
        **info,
        "status": "ready" if ready else validation.PENDING[kind],
        "owner": auth.tenant(),
        "blob": blob.relative_to(storage.root).as_posix(),
    }
    records = get_records()
    records.add_file(kind, meta)
    if not ready:
        try:
            validation.enqueue_file(get_queue(), kind, meta["id"])
        except Exception:
            lost = {"status": validation.FAILED[kind], "reason": "the validation could not be queued"}
            records.update_file(kind, meta["id"], lost)
            raise
    response = jsonify(public_view(kind, meta))
    response.status_code = 201 if ready else 202
    response.headers["Location"] = url_for("files.get_one", kind=f"{kind}s", file_id=meta["id"], _external=True)
    return response


UPLOAD_PARTS = ("file", "external-data")


def _refuse_other_parts(kind: str) -> None:
    """An upload is the one part ``file`` (and a model's ``external-data`` parts): anything else was
    meant for something, and silently dropping it, or keeping one of two files, would hide that."""
    allowed = UPLOAD_PARTS if kind == "model" else UPLOAD_PARTS[:1]
    # A dataset's external-data has its own message ("only for models"), given by the caller.
    unknown = [name for name in (*request.form.keys(), *request.files.keys()) if name not in UPLOAD_PARTS]
    if unknown:
        listed = " and ".join(repr(n) for n in allowed)
        name = safe_name(unknown[0])[:60] if unknown[0] else "(a part without a name)"
        raise ValidationError(
            f"unknown multipart field {name!r}: a {kind} upload takes only {listed}",
            details={"field": name, "allowed": list(allowed)},
        )
    files = request.files.getlist("file")
    if len(files) > 1:
        raise ValidationError(f"one {kind} per upload: {len(files)} parts are named 'file'", details={"field": "file"})


def _kind(kinds: str) -> str:
    """``models`` -> ``model``; the route's ``any()`` converter admits nothing else."""
    return kinds[:-1]


@bp.post("/<any(models, datasets):kind>")
def upload(kind: str):
    return _upload(_kind(kind))


@bp.get("/<any(models, datasets):kind>")
def list_all(kind: str):
    """The caller's models or datasets, oldest first, a page at a time (``limit``, ``cursor``)."""
    limit, after = page_args(FILE_ID_RE)
    metas, cursor = get_records().file_page(_kind(kind), auth.tenant(), limit, after)
    return jsonify(page_body(kind, [public_view(_kind(kind), m) for m in metas], cursor))


@bp.get("/<any(models, datasets):kind>/<file_id>")
def get_one(kind: str, file_id: str):
    return jsonify(public_view(_kind(kind), owned_file(_kind(kind), file_id)))


def owned_file(kind: str, file_id: str) -> dict[str, Any]:
    meta = get_records().file(kind, file_id) if FILE_ID_RE.fullmatch(file_id) else None
    if meta is None:
        raise NotFoundError(f"no {kind} with id {file_id!r}")
    auth.check_owner(meta.get("owner", auth.PUBLIC), kind)
    return meta
