"""Attack plugins as the service sees them: what the live workers offer, as JSON in Redis.

A plugin is a Python package installed on a worker that declares an entry point in the
``secev.attacks`` group (``app.engine.plugins`` loads it). The worker publishes each plugin's
catalog entry (the same shape as a built-in's in ``GET /api/attacks``) under a key of its own
with a short TTL that it refreshes while it lives and deletes at shutdown: a worker killed
outright stops offering its plugins within ``TTL`` seconds. The API reads these keys only; it
never imports plugin code (it stays torch-free), and only this JSON description crosses.

A job naming a plugin goes to a queue of that plugin (``plugin_queue``) that only the workers
offering it listen to, besides the main queue; re-queueing after a crash routes the same way.
No torch here.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from typing import Any

import redis

from . import attack_catalog as catalog

log = logging.getLogger(__name__)

GROUP = "secev.attacks"  # the entry-point group a plugin package declares its attacks under
TTL = 15  # seconds a worker's offer outlives its last refresh (a worker killed outright)
REFRESH = 5.0
NAME_RE = re.compile(r"[a-z][a-z0-9-]{0,39}")
MAX_PARAMS = 32


def offer_key(prefix: str, worker: str) -> str:
    return f"{prefix}:plugins:{worker}"


def offers_index(prefix: str) -> str:
    """A sorted set of the workers that publish offers, scored by when their offer lapses: readers look up
    these few keys instead of scanning the whole keyspace (every job's keys) on each request."""
    return f"{prefix}:plugin-offers"


def plugin_queue(base: str, attack: str) -> str:
    """The queue of one plugin's jobs: only workers offering it listen to it."""
    return f"{base}:plugin:{attack}"


def is_plugin(attack: str) -> bool:
    return attack not in catalog.BY_NAME


# -- the catalog entry a plugin declares ----------------------------------------
def check_entry(entry: Any) -> catalog.Attack:
    """A plugin's declared catalog entry, checked so that a request can be validated against it
    exactly as a built-in's is; ``ValueError`` names what is wrong."""
    if not isinstance(entry, catalog.Attack):
        raise ValueError("its 'catalog' attribute must be an app.attack_catalog.Attack")
    if not NAME_RE.fullmatch(entry.name):
        raise ValueError(f"name {entry.name!r} must match {NAME_RE.pattern}")
    if entry.name in catalog.BY_NAME:
        raise ValueError(f"name {entry.name!r} is a built-in attack's")
    if entry.perturbation_type != "max-norm":
        raise ValueError("perturbation-type must be 'max-norm'")
    if not entry.norms or any(n not in catalog.NORMS for n in entry.norms):
        raise ValueError(f"norms must be a non-empty subset of {list(catalog.NORMS)}")
    if len(entry.params) > MAX_PARAMS:
        raise ValueError(f"at most {MAX_PARAMS} parameters")
    seen: set[str] = set()
    for p in entry.params:
        if not isinstance(p, catalog.Param) or not NAME_RE.fullmatch(p.name) or p.name in seen:
            raise ValueError(f"parameter {getattr(p, 'name', p)!r}: a Param with a unique lower-case name")
        seen.add(p.name)
        _check_param(p)
    json.dumps(entry.describe())  # everything published must be JSON
    return entry


def _check_param(p: catalog.Param) -> None:
    from .fields import parameter  # the request's own check, so a default is one a request could give

    if p.kind not in catalog.JSON_TYPES:
        raise ValueError(f"parameter {p.name!r}: kind must be one of {list(catalog.JSON_TYPES)}")
    if p.kind in ("integer", "number"):
        if not isinstance(p.minimum, (int, float)) or not isinstance(p.maximum, (int, float)) or p.minimum > p.maximum:
            raise ValueError(f"parameter {p.name!r}: needs a minimum at most its maximum")
    if p.kind == "choice" and not (p.choices and all(isinstance(c, str) for c in p.choices)):
        raise ValueError(f"parameter {p.name!r}: a choice needs string choices")
    try:
        parameter(p.name, p, p.default)
    except Exception as exc:
        raise ValueError(f"parameter {p.name!r}: its default is not valid: {exc}") from None


def entry_from_json(d: dict[str, Any]) -> catalog.Attack:
    """A published description back into a catalog entry (for validating requests against it)."""
    params = tuple(
        catalog.Param(
            p["name"], _kind(p), p.get("default"), p.get("description", ""), p.get("minimum"), p.get("maximum"),
            tuple(p.get("choices") or ()),
        )  # fmt: skip
        for p in d.get("parameters", [])
    )
    return catalog.Attack(
        d["name"], d.get("title", d["name"]), "max-norm", d.get("description", ""), d.get("paper"), params,
        tuple(d.get("norms") or catalog.NORMS),
    )  # fmt: skip


def _kind(p: dict[str, Any]) -> str:
    return {"string": "choice"}.get(p["type"], p["type"])


# -- publishing (worker) and reading (API) --------------------------------------
def publish(r: redis.Redis, prefix: str, worker: str, entries: list[catalog.Attack]) -> None:
    with r.pipeline() as pipe:
        pipe.set(offer_key(prefix, worker), json.dumps([e.describe() for e in entries]), ex=TTL)
        pipe.zadd(offers_index(prefix), {worker: time.time() + TTL})
        pipe.execute()


def withdraw(r: redis.Redis, prefix: str, worker: str) -> None:
    with r.pipeline() as pipe:
        pipe.delete(offer_key(prefix, worker))
        pipe.zrem(offers_index(prefix), worker)
        pipe.execute()


def offered(r: redis.Redis, prefix: str) -> dict[str, dict[str, Any]]:
    """The plugins the live workers offer: name -> its description, with ``plugin: true`` and
    ``workers`` (how many live workers offer it). Two workers with different versions of a plugin:
    the first description read wins (the request is validated against it)."""
    now = time.time()
    with r.pipeline() as pipe:  # a killed worker's entry lapses with its offer's TTL
        pipe.zremrangebyscore(offers_index(prefix), "-inf", now)
        pipe.zrangebyscore(offers_index(prefix), now, "+inf")
        _, workers = pipe.execute()
    keys = sorted(offer_key(prefix, w.decode() if isinstance(w, bytes) else w) for w in workers)
    out: dict[str, dict[str, Any]] = {}
    for raw in r.mget(keys) if keys else []:
        try:
            entries = json.loads(raw) if raw else []
        except ValueError:
            continue
        for d in entries if isinstance(entries, list) else []:
            if isinstance(d, dict) and isinstance(d.get("name"), str):
                seen = out.setdefault(d["name"], {**d, "plugin": True, "workers": 0})
                seen["workers"] += 1
    return out


def entries(r: redis.Redis, prefix: str) -> dict[str, catalog.Attack]:
    """The live plugins as catalog entries, for request validation (a malformed offer is skipped)."""
    out = {}
    for name, d in offered(r, prefix).items():
        try:
            out[name] = entry_from_json(d)
        except (KeyError, TypeError, ValueError) as exc:
            log.warning("skipping the malformed offer of plugin %r: %s", name, exc)
    return out


class Publisher(threading.Thread):
    """Keeps a worker's offer alive (refreshed every ``REFRESH`` seconds); ``stop`` withdraws it."""

    def __init__(self, r: redis.Redis, prefix: str, worker: str, entries: list[catalog.Attack]) -> None:
        super().__init__(daemon=True, name="plugin-offer")
        self.r, self.prefix, self.worker, self.entries = r, prefix, worker, entries
        self.stopped = threading.Event()

    def run(self) -> None:
        while True:
            try:
                publish(self.r, self.prefix, self.worker, self.entries)
            except Exception as exc:  # Redis away: the offer lapses, and comes back on the next tick
                log.debug("publishing the plugin offer failed: %s", exc)
            if self.stopped.wait(REFRESH):
                return

    def stop(self) -> None:
        self.stopped.set()
        try:
            withdraw(self.r, self.prefix, self.worker)
        except Exception as exc:
            log.warning("could not withdraw the plugin offer of worker %s: %s", self.worker, exc)


def for_request(r: redis.Redis, prefix: str, body: Any) -> dict[str, catalog.Attack]:
    """The live plugins, read only when a request names an attack that is not a built-in."""
    attack = body.get("attack") if isinstance(body, dict) else None
    return entries(r, prefix) if isinstance(attack, str) and is_plugin(attack) else {}


def waiting_note(r: redis.Redis, prefix: str, rec: dict[str, Any]) -> str | None:
    """Why a queued job naming a plugin is not running: no live worker offers that plugin now."""
    attack = (rec.get("request") or {}).get("attack")
    if rec.get("job-status") != "queued" or not isinstance(attack, str) or not is_plugin(attack):
        return None
    if attack in offered(r, prefix):
        return None
    return (
        f"no live worker offers the plugin attack '{attack}' now: the job stays queued until a worker with its "
        "package installed starts (or delete it)"
    )
