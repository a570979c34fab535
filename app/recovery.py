"""Finding abandoned evaluations and putting them back on the queue.

A running job renews its lease every second (``app.jobs.Lease``). Every live
worker checks, every few seconds, for evaluations that are ``started`` with no
lease (their worker died: SIGKILL, OOM, a lost machine) and for evaluations that
are ``queued`` but have no RQ job waiting (a work-horse that died, or a Redis
that lost the queue entry). Either is enqueued again, with the attempt count
kept, until ``MAX_ATTEMPTS``; the job resumes from its per-epsilon checkpoint.
Re-queueing revokes the old attempt's fencing token (``Records.set_status``), so a
work-horse that was only stalled stops writing the moment it runs again.

Test knobs (environment): ``RECOVERY_GRACE`` and ``RECOVERY_INTERVAL`` (seconds).
"""

from __future__ import annotations

import logging
import os
import threading

from rq import Queue

from . import migration, shards
from . import queue as jobqueue
from .records import Records, now

log = logging.getLogger(__name__)

MAX_ATTEMPTS = 3
GRACE = float(os.environ.get("RECOVERY_GRACE") or 3.0)  # seconds a fresh record may lack its lease or its RQ job
INTERVAL = float(os.environ.get("RECOVERY_INTERVAL") or 2.0)
WAITING = jobqueue.WAITING_STATUSES


def requeue(records: Records, queue: Queue, job_id: str, reason: str, timeout: int) -> None:
    rec = records.evaluation(job_id)
    if rec is None:
        return
    # One worker per attempt does the re-queue.
    if not records.redis.set(records.key("recover", job_id, str(rec["attempt"])), "1", nx=True, ex=60):
        return
    if rec["attempt"] >= MAX_ATTEMPTS:
        error = f"{reason}; gave up after {rec['attempt']} attempts"
        if records.set_status(job_id, "failed", error=error):
            shards.fail_parent(records, rec, error)
        return
    # Only from the status the sweep saw (the job may have finished meanwhile); this revokes the
    # running attempt's token, so a stalled work-horse that wakes up writes nothing more.
    if not records.set_status(job_id, "queued", expect=rec["job-status"], error=f"re-queued: {reason}"):
        return
    log.warning("re-queueing evaluation %s: %s", job_id, reason)
    old = jobqueue.fetch_job(records.redis, job_id)
    if old is not None:
        old.delete(remove_from_queue=True)
    jobqueue.enqueue_evaluation(queue, job_id, timeout, rec["request"].get("attack"))
    if rec.get("parent"):  # a shard: its parent's merge waits on the new job (same id) again
        jobqueue.rewire_merge(records.redis, rec["parent"])


def sweep_once(records: Records, queue: Queue, timeout: int) -> int:
    """One pass over the unfinished evaluations, in three pipelined round trips however many
    there are; returns how many were re-queued."""
    ids = records.active_ids()
    if not ids:
        return 0
    r = records.redis
    with r.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hmget(records.key("evaluation", job_id), "status", "started_at", "created_at", "shards")
            pipe.exists(records.key("lease", job_id))
            pipe.hget(f"rq:job:{job_id}", "status")
        replies = pipe.execute()
    count = 0
    t = now()
    for i, job_id in enumerate(ids):
        (status, started_at, created_at, sharded), leased, rq_status = replies[3 * i : 3 * i + 3]
        if status is None:
            r.srem(records.key("active"), job_id)
            continue
        status = status.decode()
        if sharded:  # a sharded evaluation runs no job of its own but its merge
            shards.settle(records, queue, job_id, GRACE, timeout)
        elif status == "started" and not leased and t - float(started_at or t) > GRACE:
            requeue(records, queue, job_id, "its worker stopped while running it", timeout)
            count += 1
        elif status == "queued" and t - float(created_at or t) > GRACE:
            if rq_status is None or rq_status.decode() not in WAITING:
                requeue(records, queue, job_id, "its queue entry was lost or its work-horse died", timeout)
                count += 1
    return count


class Recovery(threading.Thread):
    """Runs ``sweep_once`` every few seconds inside a worker process."""

    def __init__(self, records: Records, queue: Queue, timeout: int, interval: float = INTERVAL) -> None:
        super().__init__(daemon=True, name="recovery")
        self.records, self.queue, self.timeout, self.interval = records, queue, timeout, interval
        self.stopped = threading.Event()

    def run(self) -> None:
        indexed = False
        while not self.stopped.wait(self.interval):
            try:
                if not indexed:  # records from before the per-tenant indexes, once per worker start
                    migration.index_legacy(self.records)
                    indexed = True
                sweep_once(self.records, self.queue, self.timeout)
            except Exception as exc:  # Redis away: try again next tick
                log.debug("recovery pass failed: %s", exc)
