"""The RQ job: run one stored evaluation request and store its output.

Enqueued by name (``app.jobs.run_evaluation``) with the evaluation id as its
only argument. Runs inside RQ's work-horse, so CUDA is first touched here, never
in the worker's parent process. While it runs, a lease key is renewed every
second; a job whose lease lapses was abandoned (its worker died) and is
re-queued by a live worker (see ``app.recovery``).
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import traceback
from typing import Any

from rq import get_current_job
from rq.timeouts import JobTimeoutException

from .config import Config
from .exceptions import ServiceError
from .extensions import connect
from .records import Records
from .storage import Storage, file_scope, sha256_file

log = logging.getLogger(__name__)

LEASE_TTL = 10
LEASE_RENEW = 1.0


class Lease(threading.Thread):
    """Renews the job's lease and notices when its record is deleted (the job was canceled)."""

    def __init__(self, records: Records, job_id: str, attempt: int) -> None:
        super().__init__(daemon=True, name=f"lease-{job_id}")
        self.records, self.job_id = records, job_id
        self.value = f"{socket.gethostname()}:{os.getpid()}:{attempt}"
        self.canceled = threading.Event()
        self.done = threading.Event()

    def run(self) -> None:
        key = self.records.key("lease", self.job_id)
        while not self.done.is_set():
            try:
                if not self.records.redis.exists(self.records.key("evaluation", self.job_id)):
                    self.canceled.set()
                    return
                self.records.redis.set(key, self.value, ex=LEASE_TTL)
            except Exception:  # Redis briefly away: keep running, the lease may lapse
                log.warning("could not renew lease of %s", self.job_id)
            self.done.wait(LEASE_RENEW)

    def stop(self) -> None:
        self.done.set()
        try:
            self.records.redis.delete(self.records.key("lease", self.job_id))
        except Exception:
            pass


def _throttled_progress(records: Records, job_id: str):
    last = [0.0]

    def report(done: int, total: int) -> None:
        now = time.monotonic()
        if now - last[0] >= 0.5 or done >= total:
            last[0] = now
            records.set_progress(job_id, done, total)

    return report


def run_evaluation(job_id: str) -> dict[str, Any] | None:
    """Entry point for RQ. Failures are recorded on the evaluation, not raised: a bad
    model is the user's to fix, and re-running it would only fail again."""
    from .engine.attacks import StopRequested
    from .engine.evaluation import evaluate

    settings = Config.from_env()
    records = Records(connect(settings), settings.key_prefix)
    storage = Storage(settings.appdata)
    attempt = records.claim(job_id)
    if attempt is None:
        return None  # deleted, already done, or held by another worker (a duplicate delivery)
    rec = records.evaluation(job_id)
    lease = Lease(records, job_id, attempt)
    lease.start()
    try:
        resolved = rec["resolved"]
        scope = file_scope(rec["owner"], bool(settings.api_keys))
        model_path = storage.job_input(resolved["model"], scope, settings.file_references)
        dataset_path = storage.job_input(resolved["dataset"], scope, settings.file_references)
        output = evaluate(
            rec["request"],
            model_path,
            dataset_path,
            work_dir=storage.job_dir(job_id),
            progress=_throttled_progress(records, job_id),
            should_stop=lease.canceled.is_set,
        )
        output["model"] = {"id": resolved["model"]["id"], "sha256": resolved["model"]["sha256"] or sha256_file(model_path)}
        output["dataset"] = {
            "id": resolved["dataset"]["id"],
            "sha256": resolved["dataset"]["sha256"] or sha256_file(dataset_path),
        }
        output["job_id"] = job_id
        output["attempt"] = attempt
        if records.evaluation(job_id) is None:
            return None
        records.store_result(job_id, output)
        records.set_status(job_id, "finished")
        return {"job_id": job_id, "sec-value": output["sec-value"]}
    except StopRequested:
        log.info("evaluation %s was canceled while running", job_id)
        return None
    except ServiceError as exc:
        records.set_status(job_id, "failed", error=exc.message, details=exc.details if exc.details is not None else "")
        return None
    except JobTimeoutException:
        current = get_current_job()
        timeout = current.timeout if current is not None else settings.job_timeout
        records.set_status(
            job_id,
            "failed",
            error=f"the evaluation ran past the job timeout ({timeout} s, JOB_TIMEOUT); "
            "use evaluation-mode 'fast', fewer perturbation-values or fewer steps",
        )
        return None
    except MemoryError:
        records.set_status(job_id, "failed", error="out of memory: lower batch-size or use evaluation-mode 'fast'")
        return None
    except Exception as exc:
        log.exception("evaluation %s failed", job_id)
        message = f"the evaluation failed: {type(exc).__name__}: {exc}"
        records.set_status(job_id, "failed", error=message[:1000], details={"traceback": traceback.format_exc()[-4000:]})
        return None
    finally:
        lease.stop()
