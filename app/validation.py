"""Checks too slow for a request, run by a worker and tracked on the file's record:
one mechanism, two kinds of file.

- A dataset whose arrays hold more than ``INLINE_SCAN_BYTES`` uncompressed is stored
  ``validating``; the job scans it and moves the record to ``ready`` (with ``n-classes`` and
  ``value-range``) or ``rejected`` with a ``reason``. A dataset named by path gets the same
  treatment through its scan-cache entry (``app.validation.validate_path``).
- Every model is stored ``verifying``; the job converts it and compares it with onnxruntime
  (``app.engine.verification``, imported inside the job) and moves the record to ``ready``
  (with ``verification`` figures) or ``unsupported`` with a ``reason``.

The job, ``app.validation.validate_file(kind, file_id)``, is enqueued by name (JSON
arguments, the evaluations' queue, at its front). Torch-free: the API imports this module.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import redis
from rq import Queue, get_current_job
from rq.job import JobStatus
from rq.registry import StartedJobRegistry
from rq.timeouts import JobTimeoutException

from . import inspection
from . import queue as jobqueue
from .config import PUBLIC, Config
from .exceptions import ConflictError, InvalidFileError, ServiceError
from .records import Records
from .storage import Storage

log = logging.getLogger(__name__)

VALIDATION_TIMEOUT = 600  # seconds a worker may spend scanning one file
SCAN_TTL = 7 * 24 * 3600
RETRY_AFTER = 5
LIVE = (JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED, JobStatus.SCHEDULED)


# The status words of each kind: checked by a worker, good to use, refused.
PENDING = {"dataset": "validating", "model": "verifying"}
FAILED = {"dataset": "rejected", "model": "unsupported"}
CHECK = {"dataset": "scan", "model": "verification"}  # what the job does, in its messages


class StillValidating(ConflictError):
    """A file named in a request is still being scanned (or verified) by a worker."""

    retry_after = RETRY_AFTER


def file_version(path: Path) -> str:
    """A file named by path, as far as caches go: its path, size and mtime, hashed."""
    st = path.stat()
    return hashlib.sha256(f"{path}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()


def scan_key(records: Records, path: Path) -> str:
    """The scan-cache key of a file named by path: a changed file (size or mtime) is scanned again."""
    return records.key("scan", file_version(path))


def _enqueue(queue: Queue, function: str, args: tuple[str, ...], job_id: str) -> None:
    queue.enqueue(
        f"app.validation.{function}",
        *args,
        job_id=job_id,
        job_timeout=VALIDATION_TIMEOUT,
        result_ttl=0,
        failure_ttl=24 * 3600,
        at_front=True,  # a short job: it must not wait behind queued evaluations
        description=f"validate {' '.join(args)}",
    )


def file_job_id(kind: str, file_id: str) -> str:
    return f"validate-{kind}-{file_id}"


def enqueue_file(queue: Queue, kind: str, file_id: str) -> None:
    _enqueue(queue, "validate_file", (kind, file_id), file_job_id(kind, file_id))


def _job_lost(connection: redis.Redis, job_id: str) -> bool:
    """True when the validation job can no longer report: it failed, was stopped, vanished, or
    its worker died while running it (RQ's heartbeat for it lapsed: about 90 s after a SIGKILL,
    without waiting for a worker's periodic registry cleanup to mark it failed)."""
    job = jobqueue.fetch_job(connection, job_id)
    if job is None:
        return True
    status = job.get_status(refresh=False)
    if status == JobStatus.STARTED:
        return job_id in StartedJobRegistry(job.origin, connection=connection).get_expired_job_ids()
    return status not in LIVE


LOST = "validation stopped before it finished (its worker died or the job was lost); upload the file again"


def current_file(records: Records, kind: str, meta: dict[str, Any]) -> dict[str, Any]:
    """The record with its status settled: old records (no status) are ready, and a record still
    ``validating``/``verifying`` whose job is gone becomes ``rejected``/``unsupported``."""
    if "status" not in meta:
        return {**meta, "status": "ready"}
    pending = PENDING[kind]
    if meta["status"] == pending and _job_lost(records.redis, file_job_id(kind, meta["id"])):
        # The job may have finished between the two reads: trust the record if it moved on.
        fresh = records.file(kind, meta["id"]) or meta
        if fresh.get("status") == pending:
            fresh = records.update_file(kind, meta["id"], {"status": FAILED[kind], "reason": LOST}) or fresh
        return fresh
    return meta


def require_ready(records: Records, kind: str, meta: dict[str, Any], field: str) -> dict[str, Any]:
    """The settled record of a file named in ``field``, or 409 (validating, verifying) /
    422 (rejected, unsupported)."""
    meta = current_file(records, kind, meta)
    status = meta["status"]
    if status == PENDING[kind]:
        check = "validated" if kind == "dataset" else "verified"
        raise StillValidating(
            f"{kind} {meta['id']} is still being {check}; retry when its status is ready",
            details={"field": field, "status": status},
        )
    if status == FAILED[kind]:
        outcome = "was rejected" if kind == "dataset" else "is unsupported"
        raise InvalidFileError(
            f"{field}: {kind} {meta['id']} {outcome}: {meta.get('reason', 'invalid file')}",
            details={"field": field, "status": status},
        )
    return meta


def inspect_inline(path: Path) -> dict[str, Any]:
    """What a request may do with a dataset: metadata checks always, the full scan only when it
    fits the inline budget (``inspection.is_scanned`` tells which happened)."""
    return inspection.inspect_dataset(path, scan=True, scan_limit=inspection.INLINE_SCAN_BYTES)


def scanned_path(records: Records, queue: Queue, path: Path, relative: str) -> dict[str, Any]:
    """The full scan of a dataset named by path, cached by path, size and mtime. Small files
    are scanned here; bigger ones by a worker, and until it is done this raises :class:`StillValidating`."""
    key = scan_key(records, path)
    cached = records.redis.get(key)
    state = json.loads(cached) if cached else None
    if state is not None and state.get("status") == "validating" and _job_lost(records.redis, state["job"]):
        # The job may have written its outcome (and been deleted) since the first read.
        cached = records.redis.get(key)
        state = json.loads(cached) if cached else None
        if state is not None and state.get("status") == "validating":
            records.redis.delete(key)  # the scan was lost: start a new one
            state = None
    if state is None:
        info = inspect_inline(path)
        if inspection.is_scanned(info):
            records.redis.set(key, json.dumps({**info, "status": "ready"}), ex=SCAN_TTL)
            return info
        job_id = f"validate-path-{key.rsplit(':', 1)[-1][:32]}"
        if records.redis.set(key, json.dumps({"status": "validating", "job": job_id}), nx=True, ex=SCAN_TTL):
            _enqueue(queue, "validate_path", (relative,), job_id)
        state = {"status": "validating"}
    status = state.pop("status", "ready")  # entries cached before statuses existed are ready
    if status == "validating":
        raise StillValidating(f"dataset {relative} is still being validated; retry when its status is ready")
    if status == "rejected":
        raise InvalidFileError(state.get("reason", "invalid file"))
    return state


# -- the jobs (run by a worker) ---------------------------------------------------
def _check(kind: str, path: Path) -> dict[str, Any]:
    """The record's update: ``ready`` plus what the check found, or the kind's refusal plus a reason."""
    if kind == "model":
        from .engine.convcache import worker_cache  # torch: in the worker only, never in the API
        from .engine.verification import verify

        return verify(path, cache=worker_cache(Config.from_env()))  # converted once: the evaluations reuse it
    return {"status": "ready", **inspection.inspect_dataset(path, scan=True)}


def _outcome(kind: str, path: Path) -> dict[str, Any]:
    """What ``_check`` found, its time limit, memory and surprises handled alike for both
    kinds; never raises for a bad file."""
    failed, check = FAILED[kind], CHECK[kind]
    try:
        return _check(kind, path)
    except InvalidFileError as exc:
        return {"status": failed, "reason": exc.message}
    except JobTimeoutException:
        job = get_current_job()
        limit = job.timeout if job is not None else VALIDATION_TIMEOUT
        return {"status": failed, "reason": f"the {check} ran past its time limit ({limit} s)"}
    except MemoryError:
        return {"status": failed, "reason": f"the {check} ran out of memory"}
    except Exception as exc:
        log.exception("%s of %s failed", check, path)
        return {"status": failed, "reason": f"the file cannot be read: {type(exc).__name__}"}


def _context() -> tuple[Config, Records, Storage]:
    from .extensions import connect

    settings = Config.from_env()
    return settings, Records(connect(settings), settings.key_prefix), Storage(settings.appdata)


def validate_file(kind: str, file_id: str) -> str | None:
    """RQ job: check an uploaded file and move its record on from ``validating``/``verifying``.
    A worker on another host checks its own copy, fetched from the API by sha256 (``app.remote``)."""
    from . import remote

    settings, records, storage = _context()
    meta = records.file(kind, file_id)
    if meta is None or meta.get("status") != PENDING[kind]:
        return None
    ref = {"kind": "upload", "id": file_id, "sha256": meta.get("sha256"), "path": meta["blob"]}
    with contextlib.ExitStack() as held:
        try:
            outcome = _outcome(kind, remote.job_input(settings, storage, ref, meta.get("owner", PUBLIC), held, kind))
        except ServiceError as exc:
            outcome = {"status": FAILED[kind], "reason": exc.message}
    records.update_file(kind, file_id, outcome)
    return outcome["status"]


def validate_path(relative: str) -> str:
    """RQ job: scan a dataset named by path and cache the outcome under its scan key."""
    from . import remote

    settings, records, storage = _context()
    with contextlib.ExitStack() as held:
        if remote.is_remote(settings):
            # The API confines the path as below and names the version its own scan key is made of.
            path, version = remote.Remote(settings).named(relative, None, held, "dataset")
            key = records.key("scan", version)
        else:
            # Confined again in the worker (never the service's own folders); the submit already
            # checked the caller's own folder, and the outcome is cached under this resolved path.
            path = storage.resolve_named_file(relative, None)
            key = scan_key(records, path)
        outcome = _outcome("dataset", path)
    records.redis.set(key, json.dumps(outcome), ex=SCAN_TTL)
    return outcome["status"]
