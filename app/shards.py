"""One evaluation spread over several workers: shards of samples and a merge.

A ``complete`` evaluation whose selection spans several blocks (``shard-size`` samples each)
is split, at submit, into contiguous ranges of whole blocks. Each range is a child evaluation
(a record with ``parent``, hidden from listings and from the owner's quota) run by the very job
a whole evaluation runs (``app.jobs.run_evaluation``): it is claimed with a fencing token,
leased, checkpointed per epsilon, recovered after a crash and stopped by a delete exactly as a
whole job is. The parent's merge job (``app.merge.merge_shards``, under the parent's id) waits for
the shards' jobs through RQ's own dependencies and writes the parent's output.

The engine batches and seeds within blocks (``Attack.block``/``offset``), so a shard computes
exactly what the unsharded run computes for its samples: the merged output is identical to the
unsharded one with the same request.

The parent's record holds ``shards`` (count, shard-size, ids, ranges); its progress is the sum of
its shards', read when it is shown. The recovery sweep calls :func:`settle` on each unfinished
parent: a failed shard fails it, and a merge whose RQ job went missing is enqueued again.

Nothing here imports torch or the engine: the API imports this module.
"""

from __future__ import annotations

import json
import logging
import math
import uuid
from typing import Any

from rq import Queue

from . import queue as jobqueue
from .records import TERMINAL, Records, now
from .schemas import FAST_MODE_SAMPLES
from .storage import Storage

log = logging.getLogger(__name__)

def selection_size(req: dict[str, Any], n_samples: int) -> int:
    """How many samples the request evaluates (``app.engine.data.select``'s rule, from the dataset's size)."""
    if req.get("indexes"):
        return len(req["indexes"])
    return n_samples if req["evaluation-mode"] == "complete" else min(n_samples, FAST_MODE_SAMPLES)


def plan(req: dict[str, Any], n_selected: int, max_shards: int) -> list[tuple[int, int]]:
    """The shards' ranges of the selection: contiguous runs of whole blocks, as even as blocks allow.

    ``shards`` "auto" shards a ``complete`` evaluation spanning more than one block, into at most
    ``max_shards``; an integer is capped at the number of blocks; ``fast`` never shards."""
    size, wanted = req["shard-size"], req["shards"]
    blocks = max(1, math.ceil(n_selected / size))
    if req["evaluation-mode"] != "complete" or n_selected == 0:
        count = 1
    elif wanted == "auto":
        count = min(blocks, max(1, max_shards))
    else:
        count = min(blocks, int(wanted))
    edges = [round(i * blocks / count) * size for i in range(count + 1)]
    return [(edges[i], min(edges[i + 1], n_selected)) for i in range(count)]


def submit(
    records: Records,
    queue: Queue,
    req: dict[str, Any],
    owner: str,
    resolved: dict[str, Any],
    ranges: list[tuple[int, int]],
    *,
    limit: int,
    timeout: int,
) -> str:
    """Store a sharded evaluation (the parent and one child per range), enqueue the shards and
    the merge; returns the parent's id. On any failure nothing is left behind."""
    ids = [str(uuid.uuid4()) for _ in ranges]
    info = {"count": len(ranges), "shard-size": req["shard-size"], "ids": ids, "ranges": [list(r) for r in ranges]}
    parent_id = records.create_evaluation(req, owner, resolved, limit=limit, more={"shards": json.dumps(info)})
    try:
        created = now()
        with records.redis.pipeline() as pipe:
            for i, (child_id, (start, stop)) in enumerate(zip(ids, ranges)):
                child_req = {**req, "shard": {"index": i, "count": len(ranges), "start": start, "stop": stop}}
                fields = records.evaluation_fields(child_req, owner, resolved, created, parent=parent_id)
                pipe.hset(records.key("evaluation", child_id), mapping=fields)
                pipe.sadd(records.key("active"), child_id)  # the recovery sweep watches shards like any job
            pipe.execute()
        for child_id in ids:
            jobqueue.enqueue_evaluation(queue, child_id, timeout, req["attack"])
        jobqueue.enqueue_merge(queue, parent_id, ids, timeout)
    except Exception:
        delete(records, None, records.evaluation(parent_id) or {"job_id": parent_id, "shards": info})
        records.delete_evaluation(parent_id)
        raise
    return parent_id


def delete(records: Records, storage: Storage | None, parent: dict[str, Any]) -> None:
    """Delete a sharded evaluation's shards: their records first (a running shard stops within a
    lease renewal and writes nothing more), then their RQ jobs and files, then the merge job."""
    ids = parent["shards"]["ids"]
    for child_id in ids:
        records.delete_evaluation(child_id)
    for job_id in [*ids, parent["job_id"]]:
        jobqueue.stop_job(records.redis, job_id)
        if storage is not None:
            storage.remove_job_dir(job_id)


def overview(records: Records, rec: dict[str, Any]) -> dict[str, Any]:
    """A parent as its owner sees it: progress summed over its shards, and how many ran.
    A whole evaluation is returned unchanged."""
    info = rec.get("shards")
    if not info:
        return rec
    with records.redis.pipeline(transaction=False) as pipe:
        for child_id in info["ids"]:
            pipe.hmget(records.key("evaluation", child_id), "status", "progress-done", "progress-total")
        rows = pipe.execute()
    statuses = [s.decode() if s else "deleted" for s, _, _ in rows]
    done = sum(int(d or 0) for _, d, _ in rows)
    totals = [int(t or 0) for _, _, t in rows]
    sizes = [stop - start for start, stop in info["ranges"]]
    # A shard not started yet reports no total: count it at the per-sample rate of one that did,
    # so the total is fixed from the first report on and ``done`` only grows towards it.
    rate = max((t / n for t, n in zip(totals, sizes) if t and n), default=0)
    total = sum(t or round(rate * n) for t, n in zip(totals, sizes))
    if rec["job-status"] == "finished":
        done = total = max(total, rec["progress"]["total"])
    summary = {"count": info["count"], "shard-size": info["shard-size"]}
    summary.update({s: statuses.count(s) for s in ("queued", "started", "finished", "failed") if statuses.count(s)})
    return {**rec, "progress": {"done": done, "total": total}, "shards": summary}


def mark_started(records: Records, child: dict[str, Any]) -> None:
    """A shard was claimed: its parent is running (from queued only, once)."""
    if child.get("parent"):
        records.set_status(child["parent"], "started", expect="queued")


def fail_on_a_failed_shard(records: Records, children: list[dict[str, Any]]) -> bool:
    """If a shard failed, fail its parent with that shard's error; True when one had."""
    for child in children:
        if child["job-status"] == "failed":
            fail_parent(records, child, child.get("error", "failed"), child.get("details"))
            return True
    return False


def fail_parent(records: Records, child: dict[str, Any], error: str, details: Any = None) -> bool:
    """A shard failed: its parent fails with the shard's error (the other shards' work is void)."""
    parent = records.evaluation(child["parent"]) if child.get("parent") else None
    if parent is None or parent["job-status"] in TERMINAL:
        return False
    shard = child["request"].get("shard", {})
    message = f"shard {shard.get('index', 0) + 1} of {shard.get('count', '?')} failed: {error}"
    # The shard's own details keep their keys (a user reads the same fields as from an unsharded run).
    if isinstance(details, dict):
        extra = {"details": {**details, "shard": shard}}
    else:
        extra = {"details": {"shard": shard, "problem": details}} if details not in (None, "") else {}
    return records.set_status(parent["job_id"], "failed", expect=parent["job-status"], error=message, **extra)


def settle(records: Records, queue: Queue, parent_id: str, grace: float, timeout: int) -> None:
    """The recovery sweep's pass over one unfinished parent: a shard that failed (also when recovery
    gave up on it) fails the parent; a merge whose RQ job is gone (it found a shard unfinished and
    ended, or Redis lost it) is enqueued again, deferred on the shards still running."""
    parent = records.evaluation(parent_id)
    if parent is None or parent["job-status"] in TERMINAL or not parent.get("shards"):
        return
    children = {c["job_id"]: c for c in records.evaluations(parent["shards"]["ids"])}
    if fail_on_a_failed_shard(records, list(children.values())):
        return
    if len(children) < parent["shards"]["count"]:
        return  # being deleted
    job = jobqueue.fetch_job(records.redis, parent_id)
    status = job.get_status(refresh=True) if job is not None else None
    ended = [c["ended_at"] or 0 for c in children.values() if c["job-status"] == "finished"]
    if status == "deferred" and len(ended) == len(children) and now() - max(ended) > grace:
        status = None  # every shard finished a while ago and the merge still waits: its dependency was lost
    if status in jobqueue.WAITING_STATUSES or now() - (parent["created_at"] or 0) < grace:
        return
    if records.redis.set(records.key("recover", parent_id, "merge"), "1", nx=True, ex=max(1, int(grace * 2))):
        log.warning("re-enqueueing the merge of sharded evaluation %s", parent_id)
        if job is not None:
            job.delete(remove_from_queue=True)
        jobqueue.enqueue_merge(queue, parent_id, parent["shards"]["ids"], timeout)
