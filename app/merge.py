"""The RQ job that merges a sharded evaluation's shards into the parent's output.

Enqueued by ``app.shards.submit`` (and again by the recovery sweep) under the parent's id,
deferred by RQ until the shards' jobs finished. It merges only when every shard's record says
``finished``; a shard still running (one re-queued after a crash) makes it end without writing,
and RQ's dependency or the sweep runs it again later. It is idempotent: the per-sample file is
replaced whole, and the output is written once, in the same transaction as the status, only
while the parent is still unfinished.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from . import reliability, remote, samples, shards
from .config import Config
from .extensions import connect
from .records import TERMINAL, Records, now
from .storage import Storage

log = logging.getLogger(__name__)

ARRAYS = ("index", "label", "broken_at", "norm", "min_norm", "true_conf", "undefended_broken_at")


def merge_shards(parent_id: str) -> dict[str, Any] | None:
    """Entry point for RQ: merge the finished shards of ``parent_id``; None when there is nothing
    (yet) to merge. Failures are recorded on the parent, never raised."""
    settings = Config.from_env()
    records = Records(connect(settings), settings.key_prefix)
    storage = Storage(settings.appdata)
    parent = records.evaluation(parent_id)
    if parent is None or parent["job-status"] in TERMINAL or not parent.get("shards"):
        return None
    ids = parent["shards"]["ids"]
    children = records.evaluations(ids)
    if len(children) < len(ids):
        return None  # being deleted
    if shards.fail_on_a_failed_shard(records, children):
        return None
    if any(child["job-status"] != "finished" for child in children):
        log.info("merge of %s: a shard is still running; it runs again once that shard finished", parent_id)
        return None
    api = remote.Remote(settings) if remote.is_remote(settings) else None
    try:
        if api is not None:  # a worker on another host: the shards' files are on the API, the merged ones go there
            for child_id in ids:
                api.fetch_artifacts(child_id, storage.job_dir(child_id))
        output = merged_output(parent, children, [records.result(i) for i in ids], storage)
        if api is not None:
            api.send_artifacts(parent_id, storage.job_dir(parent_id), None)
    except Exception as exc:  # a finished shard without its output or its file: the parent cannot be merged
        log.exception("merge of %s failed", parent_id)
        records.set_status(parent_id, "failed", expect=parent["job-status"], error=f"the merge of the shards failed: {exc}")
        return None
    finally:
        if api is not None:
            for job_id in [*ids, parent_id]:
                storage.remove_job_dir(job_id)
    while (current := records.evaluation(parent_id)) is not None and current["job-status"] not in TERMINAL:
        if records.set_status(parent_id, "finished", expect=current["job-status"], result=output):
            return {"job_id": parent_id, "sec-value": output["sec-value"]}
    if current is None:
        storage.remove_job_dir(parent_id)  # deleted while merging: leave no file behind
    return None


def merged_output(parent: dict[str, Any], children: list[dict[str, Any]], results: list, storage: Storage) -> dict[str, Any]:
    """The parent's output from its shards' outputs and per-sample files, in selection order: the
    per-sample arrays concatenated, and the curve and figures computed from them exactly as one job
    would. The reliability checks, measured by each shard on its own samples, are combined
    (``app.reliability.combine``: counts add up and are judged again; the curve is judged whole)."""
    import numpy as np

    from .engine.attacks.state import SweepState
    from .engine.defenses.run import undefended_block
    from .engine.evaluation import SAMPLES, sec_level, sec_value, write_samples
    from .figures import figures

    if any(r is None for r in results):
        raise ValueError("a finished shard has no output")
    parts: dict[str, list] = {name: [] for name in ARRAYS}
    for child in children:
        with np.load(storage.job_dir(child["job_id"]) / SAMPLES, allow_pickle=False) as part:
            for name in ARRAYS:
                if name in part.files:
                    parts[name].append(part[name])
    # An array some shard lacks (written before it existed) is left out: its figures are then null.
    arrays = {name: np.concatenate(chunks) for name, chunks in parts.items() if len(chunks) == len(children)}
    fractions = results[0]["sec-curve"]["x-values"]
    accuracy = SweepState(arrays["broken_at"], arrays["norm"], np.empty(0)).accuracy(len(fractions))
    value = sec_value(fractions, accuracy)
    work_dir = storage.job_dir(parent["job_id"])
    work_dir.mkdir(parents=True, exist_ok=True)
    write_samples(work_dir, arrays)
    # Each shard inspected the first samples it held: the parent's inspection is theirs side by side.
    inspected = samples.merge(work_dir, [storage.job_dir(child["job_id"]) for child in children])
    errors = [e for r in results if (e := r.get("inspection", {}).get("error"))]
    started = min(c["started_at"] or now() for c in children)
    output = dict(results[0])
    output.update(
        {
            "sec-curve": {"x-values": fractions, "y-values": accuracy},
            "clean-accuracy": accuracy[0],
            "sec-value": value,
            "sec-level": sec_level(value),
            "n-samples": int(len(arrays["index"])),
            "resumed": any(r["resumed"] for r in results),
            "job_id": parent["job_id"],
            "attempt": max(r["attempt"] for r in results),
            "shards": {
                "count": len(children),
                "shard-size": parent["shards"]["shard-size"],
                "ranges": parent["shards"]["ranges"],
                "attempts": [r["attempt"] for r in results],
            },
            "timing": {
                # Summed over the shards: the compute the evaluation took; wall: first shard start to merge.
                **{
                    name: round(sum(r["timing"][name] for r in results), 3)
                    for name in results[0]["timing"]
                    if name.endswith("-seconds")
                },
                # Per shard, what is not a duration (the conversion cache's state, torch threads).
                **{
                    name: [r["timing"].get(name) for r in results]
                    for name in results[0]["timing"]
                    if not name.endswith("-seconds")
                },
                "shard-total-seconds": [r["timing"]["total-seconds"] for r in results],
                "wall-seconds": round(time.time() - started, 3),
            },
            "artifacts": {"per-sample": SAMPLES},
            "inspection": samples.summary(inspected or {"samples": []}, errors[0] if errors else None),
        }
    )
    if "undefended_broken_at" in arrays:  # a defended evaluation: the bare model's curve over every shard's samples
        output["undefended"] = undefended_block(fractions, arrays["undefended_broken_at"], sec_value, sec_level)
    attack = results[0]["attack"]
    lb, ub = attack["input-bounds"]
    output["figures"] = figures(arrays, fractions, attack["epsilons-absolute"], attack["norm"], ub - lb)
    if all("checks" in r for r in results):
        random = [d["name"] for d in results[0].get("defenses", []) if d.get("random")]
        ctx = reliability.context(attack["norm"], {**results[0]["model-notes"], "random-defense": random})
        output["checks"] = reliability.combine([r["checks"] for r in results], accuracy, ctx)
        output["reliable"] = reliability.reliable(output["checks"])
    return output
