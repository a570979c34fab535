"""The job queue: RQ with its JSON serializer, jobs named by dotted path.

The API enqueues ``app.jobs.run_evaluation`` by name with the evaluation id as
its only argument, so the HTTP process never imports worker code (or torch). A
sharded evaluation's shards are such jobs too, and its merge (``app.merge.merge_shards``,
under the parent's id) waits for them through RQ's own job dependencies.
"""

from __future__ import annotations

import redis
from rq import Queue
from rq.command import send_stop_job_command
from rq.exceptions import InvalidJobOperation, NoSuchJobError
from rq.job import Dependency, Job, JobStatus
from rq.serializers import JSONSerializer

from .plugin_catalog import is_plugin, plugin_queue

JOB_FUNCTION = "app.jobs.run_evaluation"
MERGE_FUNCTION = "app.merge.merge_shards"
# An RQ job in one of these is still to run (or running).
WAITING_STATUSES = {s.value for s in (JobStatus.QUEUED, JobStatus.STARTED, JobStatus.DEFERRED, JobStatus.SCHEDULED)}


def get_queue(connection: redis.Redis, name: str) -> Queue:
    return Queue(name, connection=connection, serializer=JSONSerializer)


def route(queue: Queue, attack: str | None) -> Queue:
    """The queue a job naming ``attack`` goes to: a plugin's own queue (only the workers offering
    that plugin listen to it), else the main one. Every enqueue of an evaluation (submit, shards,
    recovery's re-queue) goes through here, so a re-queued job keeps its routing."""
    if attack is None or not is_plugin(attack):
        return queue
    return Queue(plugin_queue(queue.name, attack), connection=queue.connection, serializer=JSONSerializer)


def enqueue_evaluation(queue: Queue, job_id: str, timeout: int, attack: str | None = None) -> Job:
    return route(queue, attack).enqueue(
        JOB_FUNCTION,
        job_id,
        job_id=job_id,
        job_timeout=timeout,
        result_ttl=0,  # the curve lives in our own records, with no expiry
        failure_ttl=7 * 24 * 3600,
        description=f"security evaluation {job_id}",
    )


def enqueue_merge(queue: Queue, parent_id: str, shard_ids: list[str], timeout: int) -> Job:
    """The merge of a sharded evaluation, under the parent's id: RQ keeps it deferred until every
    shard's job has finished. A shard job deleted after its success (``result_ttl=0``) counts as
    met; the merge itself checks the shards' records and merges only when all finished."""
    return queue.enqueue(
        MERGE_FUNCTION,
        parent_id,
        job_id=parent_id,
        depends_on=Dependency(jobs=shard_ids),
        job_timeout=timeout,
        result_ttl=0,
        failure_ttl=7 * 24 * 3600,
        description=f"merge of sharded security evaluation {parent_id}",
    )


def rewire_merge(connection: redis.Redis, parent_id: str) -> None:
    """Register a deferred merge again as a dependent of its shards. Re-queueing a shard deletes its
    old RQ job and, with it, the set of jobs waiting on it; the new job has the same id."""
    job = fetch_job(connection, parent_id)
    if job is not None and job.get_status(refresh=True) == JobStatus.DEFERRED:
        job.register_dependency()


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
