"""The RQ job: run one stored evaluation request and store its output.

Enqueued by name (``app.jobs.run_evaluation``) with the evaluation id as its
only argument. Runs inside RQ's work-horse, so CUDA is first touched here, never
in the worker's parent process. ``Records.claim`` gives each attempt a fencing
token; every write the work-horse makes (lease, progress, status, result, the
checkpoint files) is made only while the evaluation still carries that token. A
lease key is renewed every half second; a job whose lease lapses was abandoned
(its worker died or stalled) and is re-queued by a live worker (see
``app.recovery``), which revokes the old token: the stalled work-horse, if it
ever runs again, stops within a second and writes nothing.

Test knob (environment): ``LEASE_TTL`` (seconds, default 10).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import threading
import time
from typing import Any

import redis
from rq import get_current_job
from rq.timeouts import JobTimeoutException

from . import metrics, remote, shards
from .config import Config
from .exceptions import ServiceError
from .extensions import connect
from .records import Claim, Records
from .redact import scrub, scrub_details
from .storage import Storage, sha256_file
from .validation import SCAN_TTL, file_version

log = logging.getLogger(__name__)

LEASE_TTL = int(os.environ.get("LEASE_TTL") or 10)
LEASE_RENEW = 0.5  # also how often a running job notices it was deleted or taken over
OOM_MESSAGE = "out of memory: lower batch-size or use evaluation-mode 'fast'"

# The attempt this work-horse claimed, by job id, for the worker's exception handler.
_claimed: dict[str, str] = {}


def claimed_token(job_id: str) -> str | None:
    """The fencing token this process holds for ``job_id`` (None when it claimed nothing)."""
    return _claimed.get(job_id)


class Lease(threading.Thread):
    """Renews the job's lease while this attempt owns the job; sets ``lost`` the moment it does not
    (the record was deleted, or the job was re-queued and claimed again)."""

    def __init__(self, records: Records, job_id: str, claim: Claim) -> None:
        super().__init__(daemon=True, name=f"lease-{job_id}")
        self.records, self.job_id, self.token = records, job_id, claim.token
        self.value = f"{socket.gethostname()}:{os.getpid()}:{claim.attempt}:{claim.token}"
        self.lost = threading.Event()
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            try:
                if not self.records.renew_lease(self.job_id, self.token, self.value, LEASE_TTL):
                    self.lost.set()
                    return
            except redis.RedisError:  # Redis briefly away: keep running, the lease may lapse
                log.warning("could not renew lease of %s", self.job_id)
            self.done.wait(LEASE_RENEW)

    def owns(self) -> bool:
        """Asked right before each checkpoint write: does this attempt still own the job?"""
        if self.lost.is_set():
            return False
        try:
            owned = self.records.owns(self.job_id, self.token)
        except redis.RedisError:
            return True  # Redis away: no newer attempt can be claimed either; the lease thread decides
        if not owned:
            self.lost.set()
        return owned

    def taken_over(self) -> bool:
        """Lost to a newer attempt (the record still exists) rather than deleted."""
        try:
            return self.lost.is_set() and self.records.evaluation(self.job_id) is not None
        except redis.RedisError:
            return self.lost.is_set()

    def stop(self) -> None:
        self.done.set()
        try:
            self.records.release_lease(self.job_id, self.value)
        except redis.RedisError:
            pass


def _throttled_progress(records: Records, job_id: str, token: str):
    last = [0.0]

    def report(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= 0.5 or done >= total:
            last[0] = now
            try:
                records.set_progress(job_id, done, total, token=token)
            except redis.RedisError:
                pass  # progress is best effort; the lease tells whether to go on

    return report


def _prune_dangling_executions(connection: redis.Redis, job_id: str) -> None:
    """RQ's job id is the evaluation id, reused by every attempt. The worker of a stalled attempt
    heartbeats its own execution under that id, and once recovery deleted that execution the entry
    left behind (a partial or missing hash) makes RQ's cleanup of this attempt's success raise.
    Drop such entries before RQ's bookkeeping runs."""
    registry = f"rq:executions:{job_id}"
    for raw in connection.zrange(registry, 0, -1):
        execution_id = raw.decode()
        if not connection.hexists(f"rq:execution:{job_id}:{execution_id}", "created_at"):
            connection.zrem(registry, execution_id)


def model_verification(records: Records, model: dict[str, Any], model_path, dataset_path, request: dict[str, Any]):
    """The model's verification figures for ``model-notes``. An uploaded model was verified by
    its own job (its record says ready, with the figures); a model named by path, or one whose
    declared input had no fixed shape to probe at upload, is verified here on the dataset's
    sample shape, and an unsupported one fails the job (``EvaluationError``) before the attack."""
    if model["kind"] == "upload":
        summary = (records.file("model", model["id"]) or {}).get("verification")
        if summary is None or "skipped" not in summary:
            return summary  # None: a record from before verification existed
    from .engine.convcache import worker_cache
    from .engine.verification import require_supported

    output_index = request.get("output-index", 0)
    # A model named by path is verified once per version of the pair of files (path, size and
    # mtime of each), not once per job: a load of jobs on one model pays for it once.
    key = records.key("verified", file_version(model_path), file_version(dataset_path), str(output_index))
    cached = records.redis.get(key)
    if cached:
        return json.loads(cached)
    figures = require_supported(model_path, dataset_path, output_index, worker_cache(Config.from_env()))
    records.redis.set(key, json.dumps(figures), ex=SCAN_TTL)
    return figures


def run_evaluation(job_id: str) -> dict[str, Any] | None:
    """Entry point for RQ. Failures are recorded on the evaluation, not raised: a bad
    model is the user's to fix, and re-running it would only fail again."""
    import torch

    from .engine.attacks import StopRequested, is_out_of_memory
    from .engine.convcache import worker_cache
    from .engine.evaluation import Limits, evaluate

    settings = Config.from_env()
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    records = Records(connect(settings), settings.key_prefix)
    storage = Storage(settings.appdata)
    began = time.monotonic()
    claim = records.claim(job_id)
    if claim is None:
        return None  # deleted, already done, or held by another worker (a duplicate delivery)
    _claimed[job_id] = claim.token
    rec = records.evaluation(job_id)
    lease = Lease(records, job_id, claim)
    lease.start()
    held = contextlib.ExitStack()  # the fetched inputs this job reads (a worker on another host): in use until it ends
    ended = False  # finished, failed or deleted: a worker on another host drops its copy of the job's folder

    def fail(message: str, details: Any = None) -> None:
        nonlocal ended
        details = scrub_details(details, storage.root) if details is not None else ""
        message = scrub(message, storage.root)
        if records.set_status(job_id, "failed", token=claim.token, error=message, details=details):
            ended = True  # only when this attempt still owned it: a newer one may use the same folder
            if rec:
                shards.fail_parent(records, rec, message, details)

    stale = False
    output: dict[str, Any] | None = None
    try:
        if rec is None:
            return None
        shards.mark_started(records, rec)
        resolved = rec["resolved"]
        model_path = remote.job_input(settings, storage, resolved["model"], rec["owner"], held, "model")
        dataset_path = remote.job_input(settings, storage, resolved["dataset"], rec["owner"], held, "dataset")
        verification = model_verification(records, resolved["model"], model_path, dataset_path, rec["request"])
        output = evaluate(
            rec["request"],
            model_path,
            dataset_path,
            work_dir=storage.job_dir(job_id),
            progress=_throttled_progress(records, job_id, claim.token),
            should_stop=lease.lost.is_set,
            owns=lease.owns,
            attempt_tag=claim.token,
            limits=Limits(disk_mb=settings.max_job_disk_mb, memory_mb=settings.max_job_memory_mb),
            conversion_cache=worker_cache(settings),
        )
        if verification is not None:
            output["model-notes"]["verification"] = verification
        output["model"] = {"id": resolved["model"]["id"], "sha256": resolved["model"]["sha256"] or sha256_file(model_path)}
        output["dataset"] = {
            "id": resolved["dataset"]["id"],
            "sha256": resolved["dataset"]["sha256"] or sha256_file(dataset_path),
        }
        output["job_id"] = job_id
        output["attempt"] = claim.attempt
        if remote.is_remote(settings):  # the API serves them: they must be there before the status says finished
            remote.Remote(settings).send_artifacts(job_id, storage.job_dir(job_id), claim.token)
        # Result and status in one fenced transaction: a stale attempt writes neither.
        if not records.set_status(job_id, "finished", token=claim.token, result=output):
            stale = lease.taken_over()
            return None
        ended = True
        return {"job_id": job_id, "sec-value": output["sec-value"]}
    except StopRequested:
        stale = lease.taken_over()
        ended = not stale
        log.info("evaluation %s %s while running", job_id, "was taken over by a newer attempt" if stale else "was canceled")
        return None
    except ServiceError as exc:
        log.warning("evaluation %s failed: %s", job_id, exc.message, exc_info=True)
        fail(exc.message, exc.details)
        return None
    except JobTimeoutException:
        current = get_current_job()
        timeout = current.timeout if current is not None else settings.job_timeout
        fail(
            f"the evaluation ran past the job timeout ({timeout} s, JOB_TIMEOUT); "
            "use evaluation-mode 'fast', fewer perturbation-values or fewer steps"
        )
        return None
    except Exception as exc:
        if is_out_of_memory(exc):
            log.warning("evaluation %s ran out of memory", job_id, exc_info=True)
            fail(OOM_MESSAGE)
            return None
        log.exception("evaluation %s failed", job_id)
        fail(f"the evaluation failed: {type(exc).__name__}: {exc}", {"exception": type(exc).__name__})
        return None
    finally:
        lease.stop()
        held.close()
        if ended and remote.is_remote(settings):
            storage.remove_job_dir(job_id)  # the API holds the artifacts; checkpoints of an ended job are void
        if not stale:
            metrics.job_ended(records, job_id, time.monotonic() - began, output)  # /metrics: outcome, duration, throughput
            try:
                _prune_dangling_executions(records.redis, job_id)
            except redis.RedisError:
                pass
        if stale and os.environ.get("RQ_JOB_ID") == job_id:
            # A forked work-horse whose attempt a newer one replaced: the RQ job under this id now
            # belongs to that attempt, so leave without RQ's success bookkeeping touching it.
            logging.shutdown()
            os._exit(0)
