"""The job queue: RQ with its JSON serializer, jobs named by dotted path.

The API enqueues ``app.jobs.run_evaluation`` by name with the evaluation id as
its only argument, so the HTTP process never imports worker code (or torch).
"""

from __future__ import annotations

import redis
from rq import Queue
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Job, JobStatus
from rq.serializers import JSONSerializer

JOB_FUNCTION = "app.jobs.run_evaluation"


def get_queue(connection: redis.Redis, name: str) -> Queue:
    return Queue(name, connection=connection, serializer=JSONSerializer)


def enqueue_evaluation(queue: Queue, job_id: str, timeout: int) -> Job:
    return queue.enqueue(
        JOB_FUNCTION,
        job_id,
        job_id=job_id,
        job_timeout=timeout,
        result_ttl=0,  # the curve lives in our own records, with no expiry
        failure_ttl=7 * 24 * 3600,
        description=f"security evaluation {job_id}",
    )


def fetch_job(connection: redis.Redis, job_id: str) -> Job | None:
    try:
        return Job.fetch(job_id, connection=connection, serializer=JSONSerializer)
    except NoSuchJobError:
        return None


def stop_job(connection: redis.Redis, job_id: str) -> None:
    """Cancel a queued job or stop a running one (its work-horse is killed)."""
    job = fetch_job(connection, job_id)
    if job is None:
        return
    status = job.get_status(refresh=True)
    if status == JobStatus.STARTED:
        # The worker kills the work-horse and records the job as stopped itself;
        # deleting the job under it would race with that bookkeeping.
        try:
            send_stop_job_command(connection, job_id, serializer=JSONSerializer)
        except InvalidJobOperation:
            pass
        return
    job.delete(remove_from_queue=True)
