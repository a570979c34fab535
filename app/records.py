"""Durable records in Redis: evaluations, their curves, uploaded models and datasets.

Key layout (prefix ``secev`` by default; nothing but the scan cache expires)::

    secev:evaluation:<id>    hash   status, owner, request (JSON), created/started/ended
                                    timestamps, error, details, progress-done/-total, attempt;
                                    a sharded one's ``shards`` (JSON), a shard's ``parent`` id
    secev:evaluations:by-owner:<tenant>  zset  that tenant's evaluation ids scored by creation time
    secev:active             set    ids of evaluations that are queued or started
    secev:active:by-owner:<tenant>       set   the same, one tenant's (the MAX_CONCURRENT_JOBS count)
    secev:result:<id>        string the finished output (JSON), written once
    secev:lease:<id>         string the worker holding a running job; expires unless renewed
                                    (the evaluation hash's ``token`` names the attempt that owns
                                    the job: every write a work-horse makes is fenced on it)
    secev:scan:<hash>        string cached scan of a dataset named by path (the one key with a TTL)
    secev:model:<id>         string model description (JSON); same for dataset:<id>
    secev:models:by-owner:<tenant>       zset  that tenant's model ids by upload time; same for datasets

Lists read only the caller's own ``by-owner`` index, a page at a time (``app.paging``):
their cost does not grow with other tenants' records.

Values are JSON text. Nothing read from Redis is ever unpickled.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any, NamedTuple

import redis

from .exceptions import QuotaExceededError
from .paging import Cursor, page, walk

TERMINAL = ("finished", "failed", "canceled")
STATUSES = ("queued", "started", *TERMINAL)


SCAN_BUDGET = 2000  # index entries one status-filtered page may examine

# Count the owner's unfinished jobs (dropping ids whose record is gone or ended, whatever
# left them behind) and create the record only below the limit, in one atomic step.
# KEYS: record, owner's active set, active set, owner's index.
# ARGV: limit, job id, created, record key prefix, then field/value pairs. Returns -1 or the count.
CREATE_SCRIPT = """
local limit = tonumber(ARGV[1])
if limit > 0 then
  local n = 0
  for _, id in ipairs(redis.call('SMEMBERS', KEYS[2])) do
    local st = redis.call('HGET', ARGV[4] .. id, 'status')
    if st == false or ENDED then
      redis.call('SREM', KEYS[2], id)
    else
      n = n + 1
    end
  end
  if n >= limit then return n end
end
redis.call('HSET', KEYS[1], unpack(ARGV, 5))
redis.call('ZADD', KEYS[4], ARGV[3], ARGV[2])
redis.call('SADD', KEYS[2], ARGV[2])
redis.call('SADD', KEYS[3], ARGV[2])
return -1
""".replace("ENDED", " or ".join(f"st == '{s}'" for s in TERMINAL))

# Fenced writes: each runs only while the evaluation hash's token is the caller's (the attempt
# that owns the job); a deleted record has no token, so nothing is written to it either.
_OWNS = "return redis.call('HGET', KEYS[1], 'token') == ARGV[1] and 1 or 0"
_RENEW = """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[2], ARGV[2], 'EX', ARGV[3])
return 1
"""
_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then redis.call('DEL', KEYS[1]) end
return 1
"""
_PROGRESS = """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'progress-done', ARGV[2], 'progress-total', ARGV[3])
return 1
"""
_RESULT = """
if redis.call('HGET', KEYS[1], 'token') ~= ARGV[1] then return 0 end
return redis.call('SET', KEYS[2], ARGV[2], 'NX') and 1 or 0
"""


def now() -> float:
    return round(time.time(), 3)


class Claim(NamedTuple):
    """One attempt at running an evaluation: its number and its fencing token."""

    attempt: int
    token: str


class Records:
    """Reads and writes the service's records in one Redis database."""

    def __init__(self, connection: redis.Redis, prefix: str = "secev") -> None:
        self.redis = connection
        self.prefix = prefix
        self._create = connection.register_script(CREATE_SCRIPT)
        self._owns, self._renew, self._release, self._progress, self._result = (
            connection.register_script(src) for src in (_OWNS, _RENEW, _RELEASE, _PROGRESS, _RESULT)
        )

    def key(self, *parts: str) -> str:
        return ":".join((self.prefix, *parts))

    def owner_index(self, what: str, owner: str) -> str:
        """One tenant's index of ``evaluations``, ``models`` or ``datasets``."""
        return self.key(what, "by-owner", owner)

    # -- evaluations ---------------------------------------------------------
    def create_evaluation(
        self, request: dict[str, Any], owner: str, extra: dict[str, Any], limit: int = 0, more: dict[str, Any] | None = None
    ) -> str:
        """Store a queued evaluation and return its id. With ``limit`` > 0, refuse it
        (``QuotaExceededError``) when the owner already has that many unfinished, atomically:
        concurrent submits cannot exceed it. ``more``: further fields (a sharded one's ``shards``)."""
        job_id = str(uuid.uuid4())
        created = now()
        fields = self.evaluation_fields(request, owner, extra, created, **(more or {}))
        keys = [
            self.key("evaluation", job_id),
            self.key("active", "by-owner", owner),
            self.key("active"),
            self.owner_index("evaluations", owner),
        ]
        args: list[Any] = [limit, job_id, created, self.key("evaluation", "")]
        for name, value in fields.items():
            args += [name, value]
        count = self._create(keys=keys, args=args, client=self.redis)
        if limit > 0 and count != -1:
            raise QuotaExceededError(
                f"at most {limit} unfinished evaluations per API key; {count} are queued or running",
                details={"limit": limit, "unfinished": count},
            )
        return job_id

    @staticmethod
    def evaluation_fields(
        request: dict[str, Any], owner: str, extra: dict[str, Any], created: float, **more: Any
    ) -> dict[str, Any]:
        """A queued evaluation's hash (a shard's too, with its ``parent``)."""
        return {
            "status": "queued",
            "owner": owner,
            "request": json.dumps(request),
            "resolved": json.dumps(extra),
            "created_at": created,
            "progress-done": 0,
            "progress-total": 0,
            "attempt": 0,
            **more,
        }

    def evaluation(self, job_id: str) -> dict[str, Any] | None:
        return self._parse(job_id, self.redis.hgetall(self.key("evaluation", job_id)))

    def evaluations(self, ids: list[str]) -> list[dict[str, Any]]:
        """Several records in one pipelined round trip; deleted ones are skipped."""
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.hgetall(self.key("evaluation", job_id))
            raws = pipe.execute()
        return [rec for job_id, raw in zip(ids, raws) if (rec := self._parse(job_id, raw)) is not None]

    @staticmethod
    def _parse(job_id: str, raw: dict[bytes, bytes]) -> dict[str, Any] | None:
        if not raw:
            return None
        rec = {k.decode(): v.decode() for k, v in raw.items()}
        out: dict[str, Any] = {
            "job_id": job_id,
            "job-status": rec.get("status", "queued"),
            "owner": rec.get("owner", "public"),
            "progress": {"done": int(rec.get("progress-done", 0)), "total": int(rec.get("progress-total", 0))},
            "attempt": int(rec.get("attempt", 0)),
            "request": json.loads(rec.get("request", "{}")),
            "resolved": json.loads(rec.get("resolved", "{}")),
        }
        for name in ("created_at", "started_at", "ended_at"):
            out[name] = float(rec[name]) if rec.get(name) else None
        if rec.get("parent"):  # a shard of a sharded evaluation (``app.shards``)
            out["parent"] = rec["parent"]
        if rec.get("shards"):
            out["shards"] = json.loads(rec["shards"])
        if rec.get("error"):
            out["error"] = rec["error"]
            if rec.get("details"):
                out["details"] = json.loads(rec["details"])
        return out

    def evaluation_page(
        self, owner: str, limit: int, after: Cursor | None = None, status: str | None = None
    ) -> tuple[list[dict[str, Any]], Cursor | None]:
        """One page of the owner's evaluations, oldest first, and the next page's cursor.

        With ``status``, the owner's index is walked from the cursor reading only each entry's
        status, at most ``SCAN_BUDGET`` entries a page: a page may come back short (even empty)
        with a cursor to go on from.
        """
        index = self.owner_index("evaluations", owner)
        if status is None:
            ids, cursor = page(self.redis, index, after, limit)
            return self.evaluations(ids), cursor
        matched: list[str] = []
        cursor, scanned, exhausted = after, 0, False
        while len(matched) < limit and scanned < SCAN_BUDGET and not exhausted:
            want = min(SCAN_BUDGET - scanned, max(limit, 100))
            batch = walk(self.redis, index, cursor, want)
            exhausted = len(batch) < want
            with self.redis.pipeline(transaction=False) as pipe:
                for job_id, _ in batch:
                    pipe.hget(self.key("evaluation", job_id), "status")
                statuses = pipe.execute()
            for (job_id, score), st in zip(batch, statuses):
                cursor, scanned = Cursor(score, job_id), scanned + 1
                if st is not None and st.decode() == status:
                    matched.append(job_id)
                    if len(matched) == limit:
                        exhausted = False  # stopped inside the batch: more may follow
                        break
        more = not exhausted and cursor is not None and bool(walk(self.redis, index, cursor, 1))
        records = [rec for rec in self.evaluations(matched) if rec["job-status"] == status]
        return records, (cursor if more else None)

    def set_status(
        self,
        job_id: str,
        status: str,
        *,
        token: str | None = None,
        expect: str | None = None,
        result: dict[str, Any] | None = None,
        **fields: Any,
    ) -> bool:
        """Set the status (and fields); with ``token``, only while that attempt owns the job; with
        ``expect``, only from that status; with ``result``, the output is written in the same
        transaction (once). Going back to ``queued`` revokes the owning attempt's token.
        Returns whether it wrote."""
        mapping: dict[str, Any] = {"status": status}
        if status == "started":
            mapping["started_at"] = now()
        if status in TERMINAL:
            mapping["ended_at"] = now()
        for name, value in fields.items():
            mapping[name] = json.dumps(value) if isinstance(value, (dict, list)) else value
        key = self.key("evaluation", job_id)
        # Only touch records that still exist: a deleted job must not be resurrected by a late write.
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    current, holder, owner = pipe.hmget(key, "status", "token", "owner")
                    if (
                        current is None
                        or (token is not None and holder != token.encode())
                        or (expect is not None and current != expect.encode())
                    ):
                        pipe.reset()
                        return False
                    pipe.multi()
                    if result is not None:
                        pipe.set(self.key("result", job_id), json.dumps(result), nx=True)
                    pipe.hset(key, mapping=mapping)
                    if status == "queued":
                        pipe.hdel(key, "token")
                    if status in TERMINAL:
                        pipe.srem(self.key("active"), job_id)
                        pipe.srem(self.key("active", "by-owner", owner.decode()), job_id)
                    pipe.execute()
                    return True
                except redis.WatchError:
                    continue

    def claim(self, job_id: str) -> Claim | None:
        """Move a queued evaluation to started, once: returns the new attempt (its number and a
        fresh fencing token), or None when it is gone or another worker already holds it."""
        key = self.key("evaluation", job_id)
        with self.redis.pipeline() as pipe:
            while True:
                try:
                    pipe.watch(key)
                    status, attempt = pipe.hmget(key, "status", "attempt")
                    if status is None or status.decode() != "queued":
                        pipe.reset()
                        return None
                    attempt_n = int(attempt or 0) + 1
                    token = f"{attempt_n}-{uuid.uuid4().hex}"
                    pipe.multi()
                    pipe.hset(key, mapping={"status": "started", "started_at": now(), "attempt": attempt_n, "token": token})
                    pipe.execute()
                    return Claim(attempt_n, token)
                except redis.WatchError:
                    continue

    def active_ids(self) -> list[str]:
        """Evaluations not yet finished, failed or canceled."""
        return [i.decode() for i in self.redis.smembers(self.key("active"))]

    def set_progress(self, job_id: str, done: int, total: int, *, token: str | None = None) -> bool:
        """Record progress; with ``token``, only while that attempt owns the job."""
        key = self.key("evaluation", job_id)
        if token is not None:
            return bool(self._progress(keys=[key], args=[token, done, total]))
        if self.redis.exists(key):
            self.redis.hset(key, mapping={"progress-done": done, "progress-total": total})
            return True
        return False

    # -- fencing: the attempt that owns a running job ------------------------
    def owns(self, job_id: str, token: str) -> bool:
        """Whether the attempt holding ``token`` still owns the job (False once deleted or re-queued)."""
        return bool(self._owns(keys=[self.key("evaluation", job_id)], args=[token]))

    def renew_lease(self, job_id: str, token: str, value: str, ttl: int) -> bool:
        """Renew the job's lease, only while ``token`` owns the job; False means: stop."""
        return bool(self._renew(keys=[self.key("evaluation", job_id), self.key("lease", job_id)], args=[token, value, ttl]))

    def release_lease(self, job_id: str, value: str) -> None:
        """Drop the lease, only if it is still ours (a newer attempt's lease is left alone)."""
        self._release(keys=[self.key("lease", job_id)], args=[value])

    def delete_evaluation(self, job_id: str) -> None:
        owner = self.redis.hget(self.key("evaluation", job_id), "owner")
        with self.redis.pipeline() as pipe:
            pipe.delete(self.key("evaluation", job_id), self.key("result", job_id), self.key("lease", job_id))
            pipe.srem(self.key("active"), job_id)
            if owner is not None:
                pipe.zrem(self.owner_index("evaluations", owner.decode()), job_id)
                pipe.srem(self.key("active", "by-owner", owner.decode()), job_id)
            pipe.execute()

    # -- results -------------------------------------------------------------
    def store_result(self, job_id: str, output: dict[str, Any], *, token: str | None = None) -> bool:
        """Write the output once; a second writer (a re-run job) does not replace it. With
        ``token``, only while that attempt owns the job."""
        if token is not None:
            keys = [self.key("evaluation", job_id), self.key("result", job_id)]
            return bool(self._result(keys=keys, args=[token, json.dumps(output)]))
        return bool(self.redis.set(self.key("result", job_id), json.dumps(output), nx=True))

    def result(self, job_id: str) -> dict[str, Any] | None:
        raw = self.redis.get(self.key("result", job_id))
        return json.loads(raw) if raw else None

    def results(self, ids: list[str]) -> dict[str, dict[str, Any]]:
        """Several outputs in one pipelined round trip, by id; missing ones are left out."""
        with self.redis.pipeline(transaction=False) as pipe:
            for job_id in ids:
                pipe.get(self.key("result", job_id))
            raws = pipe.execute()
        return {job_id: json.loads(raw) for job_id, raw in zip(ids, raws) if raw}

    # -- uploaded files ------------------------------------------------------
    def add_file(self, kind: str, meta: dict[str, Any]) -> None:
        with self.redis.pipeline() as pipe:
            pipe.set(self.key(kind, meta["id"]), json.dumps(meta))
            pipe.zadd(self.owner_index(f"{kind}s", meta["owner"]), {meta["id"]: meta["created_at"]})
            pipe.execute()

    def file(self, kind: str, file_id: str) -> dict[str, Any] | None:
        raw = self.redis.get(self.key(kind, file_id))
        return json.loads(raw) if raw else None

    def file_page(
        self, kind: str, owner: str, limit: int, after: Cursor | None = None
    ) -> tuple[list[dict[str, Any]], Cursor | None]:
        """One page of the owner's models or datasets, oldest first, and the next page's cursor."""
        ids, cursor = page(self.redis, self.owner_index(f"{kind}s", owner), after, limit)
        raws = self.redis.mget([self.key(kind, i) for i in ids]) if ids else []
        return [json.loads(r) for r in raws if r], cursor

    def update_file(self, kind: str, file_id: str, fields: dict[str, Any]) -> dict[str, Any] | None:
        """Merge ``fields`` into a file's record (a validation outcome); None when it is gone."""
        key = self.key(kind, file_id)
        raw = self.redis.get(key)
        if not raw:
            return None
        meta = {**json.loads(raw), **fields}
        self.redis.set(key, json.dumps(meta), xx=True)
        return meta
