"""Prometheus metrics, read from Redis at scrape time (``GET /metrics``, :mod:`app.api.metrics`).

The worker adds to a few hashes in Redis when a job ends (:func:`job_ended`, one call in
``app.jobs``); the API's :class:`RedisCollector` reads them, with the live figures (evaluations
queued or running, the RQ queue's length, live workers, and the same two per attack plugin queue),
on every scrape. Nothing is kept in the
API's processes, so every gunicorn worker answers the same. Aggregate numbers only: no tenant,
key, file name or job id is ever a label. No torch here: the API imports this module.

Keys (under the records' prefix, ``secev`` by default; none expires)::

    secev:metrics:jobs      hash  outcome (finished, failed) -> jobs a worker ran to that end
    secev:metrics:duration  hash  bucket index -> jobs, "sum" (s): each such job's run time
    secev:metrics:attack    hash  "sample-steps", "seconds": the attacks' work and time, finished jobs
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import redis
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from rq import Queue

from .plugin_catalog import plugin_queue
from .records import Records

log = logging.getLogger(__name__)

# Upper bounds (seconds) of the job duration histogram: a small model's job takes seconds, a
# large one on a CPU an hour or more (JOB_TIMEOUT defaults to a day).
BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 7200, 21600, 86400)
OUTCOMES = ("finished", "failed")
LIVE_STATUSES = ("queued", "started")


def _bucket(seconds: float) -> int:
    """Index of the first bucket holding ``seconds`` (``len(BUCKETS)``: the +Inf bucket)."""
    return next((i for i, bound in enumerate(BUCKETS) if seconds <= bound), len(BUCKETS))


def job_ended(records: Records, job_id: str, seconds: float, output: dict[str, Any] | None) -> None:
    """Called by the work-horse at the end of each job it claimed (best effort: a Redis error is
    logged, never raised). Counts only an end this attempt reached, read back from the record: a
    job deleted while it ran, or taken over by a newer attempt, adds nothing."""
    try:
        status = records.redis.hget(records.key("evaluation", job_id), "status")
        outcome = status.decode() if status else None
        if outcome not in OUTCOMES:
            return
        with records.redis.pipeline() as pipe:
            pipe.hincrby(records.key("metrics", "jobs"), outcome, 1)
            duration = records.key("metrics", "duration")
            pipe.hincrby(duration, str(_bucket(seconds)), 1)
            pipe.hincrbyfloat(duration, "sum", seconds)
            timing = (output or {}).get("timing") or {}
            if outcome == "finished" and "attack-sample-steps" in timing:
                pipe.hincrby(records.key("metrics", "attack"), "sample-steps", int(timing["attack-sample-steps"]))
                pipe.hincrbyfloat(records.key("metrics", "attack"), "seconds", float(timing["attack-seconds"]))
            pipe.execute()
    except redis.RedisError:
        log.warning("could not record the metrics of job %s", job_id)


def live_workers(queue: Queue) -> int:
    """Workers registered on ``queue`` whose key still exists (RQ expires it when a worker stops
    heartbeating: its ``worker_ttl`` + 60 s). Read-only, unlike RQ's own registry cleanup."""
    keys = list(queue.connection.smembers(f"rq:workers:{queue.name}"))
    if not keys:
        return 0
    with queue.connection.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.exists(key)
        return sum(1 for alive in pipe.execute() if alive)


def plugin_queues(queue: Queue) -> list[Queue]:
    """The attack plugins' queues RQ has registered (its set of queue keys: names only, no job is read).
    Their names come from the plugins the workers' operators installed, never from a request."""
    prefix = f"{Queue.redis_queue_namespace_prefix}{plugin_queue(queue.name, '')}"
    keys = sorted(k.decode() for k in queue.connection.smembers(Queue.redis_queues_keys))
    names = [k[len(Queue.redis_queue_namespace_prefix) :] for k in keys if k.startswith(prefix)]
    return [Queue(name, connection=queue.connection) for name in names]


def _live_evaluations(records: Records) -> dict[str, int]:
    """Evaluations queued or running (from the set of unfinished ones; a sharded one's shards,
    internal jobs, are not counted: they show in the queue length)."""
    counts = dict.fromkeys(LIVE_STATUSES, 0)
    ids = [i.decode() for i in records.redis.smembers(records.key("active"))]
    with records.redis.pipeline(transaction=False) as pipe:
        for job_id in ids:
            pipe.hmget(records.key("evaluation", job_id), "status", "parent")
        rows = pipe.execute() if ids else []
    for status, parent in rows:
        if status is not None and parent is None and status.decode() in counts:
            counts[status.decode()] += 1
    return counts


class RedisCollector(Collector):
    """Every metric, read from Redis when collected."""

    def __init__(self, records: Records, queue: Queue) -> None:
        self.records, self.queue = records, queue

    def collect(self) -> Iterator[Metric]:
        r, key = self.records.redis, self.records.key
        evaluations = GaugeMetricFamily("secev_evaluations", "Evaluations by status, now (shards not counted)", labels=["status"])
        for status, n in _live_evaluations(self.records).items():
            evaluations.add_metric([status], n)
        yield evaluations
        yield GaugeMetricFamily("secev_queue_length", "Jobs waiting in the RQ queue (shards included)", value=self.queue.count)
        yield GaugeMetricFamily("secev_workers_live", "Workers on the queue, heartbeating", value=live_workers(self.queue))
        waiting = GaugeMetricFamily("secev_plugin_queue_length", "Jobs waiting in an attack plugin's queue", labels=["attack"])
        serving = GaugeMetricFamily("secev_plugin_workers_live", "Workers on an attack plugin's queue", labels=["attack"])
        for plugin in plugin_queues(self.queue):
            attack = plugin.name[len(plugin_queue(self.queue.name, "")) :]
            waiting.add_metric([attack], plugin.count)
            serving.add_metric([attack], live_workers(plugin))
        yield waiting
        yield serving
        jobs = {k.decode(): int(v) for k, v in r.hgetall(key("metrics", "jobs")).items()}
        ended = CounterMetricFamily("secev_worker_jobs", "Jobs workers ran to an end (a shard: one)", labels=["outcome"])
        for outcome in OUTCOMES:
            ended.add_metric([outcome], jobs.get(outcome, 0))
        yield ended
        raw = {k.decode(): v for k, v in r.hgetall(key("metrics", "duration")).items()}
        cumulative, buckets = 0, []
        for i, bound in enumerate((*BUCKETS, float("inf"))):
            cumulative += int(raw.get(str(i), 0))
            buckets.append(("+Inf" if bound == float("inf") else str(bound), cumulative))
        yield HistogramMetricFamily(
            "secev_job_duration_seconds",
            "Run time of each job a worker finished or failed (one attempt: claim to end)",
            buckets=buckets,
            sum_value=float(raw.get("sum", 0)),
        )
        attack = {k.decode(): float(v) for k, v in r.hgetall(key("metrics", "attack")).items()}
        steps, seconds = attack.get("sample-steps", 0), attack.get("seconds", 0)
        yield CounterMetricFamily("secev_attack_sample_steps", "Attack steps times samples, finished jobs", value=steps)
        yield CounterMetricFamily("secev_attack_seconds", "Seconds the attacks ran, finished jobs", value=seconds)


def exposition(records: Records, queue: Queue) -> bytes:
    """The Prometheus text format of every metric, read now."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(RedisCollector(records, queue))
    return generate_latest(registry)
