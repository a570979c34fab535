"""The RQ worker process: JSON serializer, failure bookkeeping, abandoned-job recovery."""

from __future__ import annotations

import logging

# Imported once here so every forked work-horse starts warm (onnx2pytorch alone, with
# torchvision, costs about 2 s per import); none of these initializes CUDA.
import onnx2pytorch  # noqa: F401
import torch  # noqa: F401
from rq import Worker
from rq.serializers import JSONSerializer

from . import queue as jobqueue
from .config import Config
from .engine import evaluation  # noqa: F401
from .extensions import connect
from .records import Records
from .recovery import Recovery

log = logging.getLogger(__name__)


def make_failure_handler(records: Records):
    """RQ calls this when a job fails outside our own error handling: its work-horse was
    killed or crashed. The job is marked for re-queueing (recovery does it) unless it was deleted."""

    def handle(job, exc_type, exc_value, tb) -> bool:
        rec = records.evaluation(job.id)
        if rec is not None and rec["job-status"] == "started":
            records.set_status(job.id, "queued", error=f"work-horse died: {exc_type.__name__ if exc_type else 'unknown'}")
        return True

    return handle


def main(*, burst: bool = False, name: str | None = None) -> int:
    settings = Config.from_env()
    connection = connect(settings, socket_timeout=None)
    records = Records(connection, settings.key_prefix)
    queue = jobqueue.get_queue(connection, settings.queue_name)
    worker = Worker(
        [queue],
        connection=connection,
        serializer=JSONSerializer,
        name=name,
        exception_handlers=[make_failure_handler(records)],
        disable_default_exception_handler=False,
    )
    recovery = Recovery(records, queue, settings.job_timeout)
    recovery.start()
    try:
        worker.work(burst=burst, with_scheduler=False)
    finally:
        recovery.stopped.set()
    return 0
