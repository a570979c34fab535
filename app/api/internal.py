"""Internal routes for workers on other hosts (``app.remote``): inputs out, artifacts in.

Authenticated only by ``Authorization: Bearer <WORKER_TOKEN>`` (compared in constant time), never
by API keys; with no ``WORKER_TOKEN`` on the API every route here answers 404, as if absent. They
are not part of the public OpenAPI document.

- ``GET /api/internal/blobs/<sha256>``: an uploaded model or dataset, by its hash.
- ``GET /api/internal/bundles/<sha256>``: a model with external data: its files' names and sizes;
  ``…/bundles/<sha256>/<name>`` one of them.
- ``GET /api/internal/named-files?path=<files/…>&owner=<tenant>``: a file named by path in a request,
  confined exactly as the worker confines it on a shared volume (``Storage.resolve_named_file``).
- ``PUT /api/internal/evaluations/<id>/artifacts``: the job's artifacts (a tar, ``app.artifacts``),
  accepted only from the attempt that owns the job (``X-Attempt-Token``); ``GET`` the same, for a merge.

Files stream from disk (``send_file``) with ``Content-Length`` and ``X-Content-SHA256``. No path is
ever formed from request text but through a full-match pattern (64 hex digits, a job UUID, a data
file name) or the named files' confinement.
"""

from __future__ import annotations

import hmac
import json
import re
import tempfile
from pathlib import Path

from flask import Blueprint, Response, jsonify, request, send_file

from .. import artifacts
from ..bundles import DATA_NAME_RE
from ..config import PUBLIC
from ..exceptions import ConflictError, NotFoundError, UnauthorizedError, UnsafePathError
from ..extensions import get_records, get_settings, get_storage
from ..records import TERMINAL
from ..storage import BLOB_RE, BUNDLE_GRAPH, file_scope, sha256_file
from ..validation import SCAN_TTL, file_version
from .evaluations import UUID_RE

bp = Blueprint("internal", __name__, url_prefix="/api/internal")

SHA_RE = re.compile(r"[0-9a-f]{64}")
SHA_HEADER = "X-Content-SHA256"
VERSION_HEADER = "X-File-Version"
TOKEN_HEADER = "X-Attempt-Token"


@bp.before_request
def worker_only() -> None:
    """404 while the API has no worker token; 401 without the right one."""
    token = get_settings().worker_token
    if not token:
        raise NotFoundError("not found: internal routes are off (WORKER_TOKEN is not set on the API)")
    supplied = request.headers.get("Authorization", "")
    supplied = supplied[7:].strip() if supplied.lower().startswith("bearer ") else ""
    if not supplied or not hmac.compare_digest(token.encode(), supplied.encode()):
        raise UnauthorizedError("a worker token is required (Authorization: Bearer <WORKER_TOKEN>)")


def _sha(sha256: str) -> str:
    if not SHA_RE.fullmatch(sha256):
        raise NotFoundError("expected a sha256: 64 lower-case hex digits")
    return sha256


def _stream(path: Path, sha256: str | None = None, **headers: str) -> Response:
    response = send_file(path, mimetype="application/octet-stream", conditional=False, etag=False, max_age=0)
    if sha256:
        response.headers[SHA_HEADER] = sha256
    response.headers.update(headers)
    return response


@bp.get("/blobs/<sha256>")
def blob(sha256: str):
    folder = get_storage().root / "blobs" / _sha(sha256)[:2]
    for path in sorted(folder.glob(f"{sha256}.*")):  # the hash is checked: only the extension varies
        rel = path.relative_to(get_storage().root).as_posix()
        if BLOB_RE.fullmatch(rel) and path.is_file() and not path.is_symlink():
            return _stream(path, sha256)
    raise NotFoundError(f"no stored upload with sha256 {sha256}")


def _bundle_dir(sha256: str) -> Path:
    folder = get_storage().root / "blobs" / _sha(sha256)[:2] / sha256
    if folder.is_symlink() or not (folder / BUNDLE_GRAPH).is_file():
        raise NotFoundError(f"no stored model with external data with sha256 {sha256}")
    return folder


def _bundle_member(name: str) -> bool:
    return name == BUNDLE_GRAPH or bool(DATA_NAME_RE.fullmatch(name))


@bp.get("/bundles/<sha256>")
def bundle(sha256: str):
    folder = _bundle_dir(sha256)
    files = [
        {"name": p.name, "size": p.stat().st_size}
        for p in sorted(folder.iterdir())
        if _bundle_member(p.name) and p.is_file() and not p.is_symlink()
    ]
    return jsonify({"sha256": sha256, "files": files})


@bp.get("/bundles/<sha256>/<name>")
def bundle_file(sha256: str, name: str):
    path = _bundle_dir(sha256) / name if _bundle_member(name) else None
    if path is None or path.is_symlink() or not path.is_file():
        raise NotFoundError(f"the model {sha256} has no file {name[:130]!r}")
    return _stream(path)


@bp.get("/named-files")
def named_file():
    """A file named by path, confined to ``files/`` (with ``owner``, to that tenant's folder, as a job's
    worker checks it); its hash is computed once per version (path, size, mtime) and kept in Redis."""
    settings, storage = get_settings(), get_storage()
    if not settings.file_references:
        raise UnsafePathError("file references are disabled on this service (FILE_REFERENCES=off)")
    relative = request.args.get("path", "")
    owner = request.args.get("owner")
    scope = None if owner is None else file_scope(owner or PUBLIC, bool(settings.api_keys))
    path = storage.resolve_named_file(relative, scope)
    if not path.is_file():
        raise NotFoundError(f"{relative[:200]!r} no longer exists")
    version = file_version(path)
    records = get_records()
    key = records.key("sha", version)
    sha256 = (records.redis.get(key) or b"").decode()
    if not SHA_RE.fullmatch(sha256):
        sha256 = sha256_file(path)
        records.redis.set(key, sha256, ex=SCAN_TTL)
    return _stream(path, sha256, **{VERSION_HEADER: version})


def _job_dir(job_id: str) -> Path:
    if not UUID_RE.fullmatch(job_id):
        raise NotFoundError("no evaluation with that id")
    return get_storage().job_dir(job_id)


@bp.put("/evaluations/<job_id>/artifacts")
def put_artifacts(job_id: str):
    """Store a running job's artifacts, from the attempt that owns it (a sharded parent, merged by any
    worker, has no attempt: only its state is checked). 409 once it ended or another attempt owns it."""
    job_dir = _job_dir(job_id)
    records = get_records()
    token = request.headers.get(TOKEN_HEADER, "")

    def still_owned() -> bool:
        rec = records.evaluation(job_id)
        if rec is None or rec["job-status"] in TERMINAL:
            return False
        return bool(rec.get("shards")) or (bool(token) and records.owns(job_id, token))

    if not still_owned():
        raise ConflictError(
            f"evaluation {job_id} is not running under this attempt: its artifacts are not accepted",
            details={"job_id": job_id},
        )
    max_bytes = get_settings().max_upload_mb * 2**20
    request.max_content_length = max_bytes + 2**20  # the tar's headers and padding on top of the files
    written = artifacts.receive(request.stream, job_dir, max_bytes, still_owned)
    if not written and not still_owned():
        raise ConflictError(f"evaluation {job_id} ended or was taken over while its artifacts arrived")
    return jsonify({"job_id": job_id, "files": len(written)})


@bp.get("/evaluations/<job_id>/artifacts")
def get_artifacts(job_id: str):
    """A job's artifacts as a tar (a sharded evaluation's merge reads its shards' this way)."""
    job_dir = _job_dir(job_id)
    if get_records().evaluation(job_id) is None or not job_dir.is_dir():
        raise NotFoundError(f"evaluation {job_id} has no artifacts")
    uploads = get_storage().root / "uploads"
    uploads.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=uploads, suffix=".tar", delete=False) as out:
        count = artifacts.pack(job_dir, out)
    path = Path(out.name)
    response = _stream(path, **{"X-Artifact-Count": json.dumps(count)})
    response.call_on_close(lambda: path.unlink(missing_ok=True))
    return response
