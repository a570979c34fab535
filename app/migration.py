"""Upgrading records written by earlier versions of the key layout (``app.records`` documents today's).

Run by each worker's recovery thread once at start; every step is idempotent, so several workers
may run it at once.
"""

from __future__ import annotations

import json
from typing import Any

from .records import TERMINAL, Records


def _owner_and_status(raw: Any) -> tuple[str | None, str | None]:
    """(owner, status) from an evaluation's ``HMGET owner status`` or a file's JSON (no status)."""
    if isinstance(raw, list):
        owner, status = raw
        return (owner.decode() if owner else None), (status.decode() if status else None)
    return (json.loads(raw).get("owner", "public") if raw else None), None


def index_legacy(records: Records, batch: int = 500) -> int:
    """Move records stored before the per-tenant indexes (listed in the global ``evaluations``,
    ``models`` and ``datasets`` zsets) into their owners' indexes and active sets, emptying
    the global zsets; returns how many entries it took. Idempotent, and safe in several workers at once."""
    moved = 0
    for what, kind in (("evaluations", "evaluation"), ("models", "model"), ("datasets", "dataset")):
        old = records.key(what)
        while entries := [(m.decode(), score) for m, score in records.redis.zrange(old, 0, batch - 1, withscores=True)]:
            with records.redis.pipeline(transaction=False) as pipe:
                for member, _ in entries:
                    if kind == "evaluation":
                        pipe.hmget(records.key(kind, member), "owner", "status")
                    else:
                        pipe.get(records.key(kind, member))
                raws = pipe.execute()
            with records.redis.pipeline(transaction=False) as pipe:
                for (member, score), raw in zip(entries, raws):
                    owner, status = _owner_and_status(raw)
                    if owner is None:
                        continue  # deleted meanwhile
                    pipe.zadd(records.owner_index(what, owner), {member: score})
                    if status is not None and status not in TERMINAL:
                        pipe.sadd(records.key("active", "by-owner", owner), member)
                pipe.zrem(old, *[member for member, _ in entries])
                pipe.execute()
            moved += len(entries)
    return moved
