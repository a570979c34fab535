"""The RQ worker process: JSON serializer, failure bookkeeping, abandoned-job recovery, attack plugins."""

from __future__ import annotations

import logging

import redis

# Imported once here so every forked work-horse starts warm; none of these initializes CUDA.
import torch  # noqa: F401
from rq import Worker
from rq.serializers import JSONSerializer

from . import plugin_catalog
from . import queue as jobqueue
from .config import Config
from .engine import attribution, convcache, converter, evaluation, plugins, verification  # noqa: F401
from .extensions import connect
from .jobs import claimed_token
from .records import Records
from .recovery import Recovery

log = logging.getLogger(__name__)


def make_failure_handler(records: Records):
    """RQ calls this, inside the work-horse, when an exception escapes ``run_evaluation`` (our own
    error handling failed). The job is marked for re-queueing (recovery does it), fenced on the
    attempt this work-horse claimed: a deleted job, or one a newer attempt owns, is left alone."""

    def handle(job, exc_type, exc_value, tb) -> bool:
        token = claimed_token(job.id)
        if token is not None:
            reason = exc_type.__name__ if exc_type else "unknown"
            records.set_status(job.id, "queued", token=token, expect="started", error=f"the work-horse failed: {reason}")
        return True

    return handle


def warm_up() -> None:
    """What every job would otherwise pay again in its fresh work-horse, paid once here: onnx2pytorch
    (without torchvision, see ``engine.converter``), the conversion cache's version key, and captum
    and the colour maps of the per-sample inspection. CPU only."""
    converter.convert_model_class()
    convcache.converter_version()
    attribution.warm_up()


def main(*, burst: bool = False, name: str | None = None) -> int:
    settings = Config.from_env()
    connection = connect(settings, socket_timeout=None)
    try:
        connection.ping()
    except redis.RedisError as exc:  # said in one line, without the password a REDIS_URL may hold
        where = connection.connection_pool.connection_kwargs
        log.error(
            "cannot reach Redis at %s:%s (db %s): %s; start Redis or set REDIS_URL",
            where.get("host", where.get("path", "?")),
            where.get("port", ""),
            where.get("db", 0),
            exc,
        )
        return 1
    warm_up()
    records = Records(connection, settings.key_prefix)
    queue = jobqueue.get_queue(connection, settings.queue_name)
    # Loaded before the work-horses fork, so each inherits them; a job naming a plugin waits in that
    # plugin's queue, which only workers offering it listen to (``app.queue.route``).
    offered = plugins.install()
    worker = Worker(
        [queue, *(jobqueue.route(queue, entry.name) for entry in offered)],
        connection=connection,
        serializer=JSONSerializer,
        name=name,
        exception_handlers=[make_failure_handler(records)],
        disable_default_exception_handler=False,
    )
    recovery = Recovery(records, queue, settings.job_timeout)
    recovery.start()
    publisher = plugin_catalog.Publisher(connection, settings.key_prefix, worker.name, offered)
    if offered:
        publisher.start()
    try:
        worker.work(burst=burst, with_scheduler=False)
    finally:
        recovery.stopped.set()
        publisher.stop()
    return 0
