"""Container healthchecks: ``python -m app.probe api`` and ``python -m app.probe worker``.

The Dockerfile's ``HEALTHCHECK`` and compose's ``healthcheck`` run these; exit status 0 is
healthy. Neither imports Flask's app or torch, so a check costs a fraction of a second.

``api``: ``GET /api/health`` on this host (the port of ``BIND``; 0.0.0.0 is asked on 127.0.0.1)
answers 200 with ``"status": "ok"``, which the API says only while Redis answers it.

``worker``: a worker of this host (RQ records each worker's hostname and pid) is registered on the
queue in Redis, its key is alive (RQ expires it when the worker stops heartbeating) and its
process is alive here. In a container the hostname is the container's, so each replica of
``--scale worker=N`` checks its own worker.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import urllib.error
import urllib.request

import redis

from .config import Config
from .extensions import connect

TIMEOUT = 5.0


def api_url(bind: str) -> str:
    """The health URL of the API bound to ``bind`` (gunicorn's first ``BIND`` address)."""
    host, _, port = bind.split(",")[0].strip().rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0", "::"):
        host = "127.0.0.1"
    return f"http://{host if ':' not in host else f'[{host}]'}:{port}/api/health"


def check_api() -> str | None:
    """None when healthy, else why not."""
    url = api_url(os.environ.get("BIND") or "127.0.0.1:8000")
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
            body = json.loads(response.read())
    except (OSError, ValueError) as exc:
        return f"{url}: {exc}"
    return None if body.get("status") == "ok" else f"{url}: {body}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, another user's
    return True


def check_worker() -> str | None:
    """None when a live worker of this host serves the queue, else why not."""
    settings = Config.from_env()
    connection = connect(settings, socket_timeout=TIMEOUT)
    hostname = socket.gethostname()
    try:
        keys = sorted(k.decode() for k in connection.smembers(f"rq:workers:{settings.queue_name}"))
        for key in keys:
            host, pid = connection.hmget(key, "hostname", "pid")
            if host is not None and host.decode() == hostname and pid is not None and _alive(int(pid)):
                return None
    except redis.RedisError as exc:  # unreachable, a wrong password: unhealthy, said plainly
        return f"redis: {type(exc).__name__}: {exc}"
    return f"no live worker of host {hostname} on queue {settings.queue_name!r} ({len(keys)} registered)"


def main(argv: list[str]) -> int:
    checks = {"api": check_api, "worker": check_worker}
    if len(argv) != 1 or argv[0] not in checks:
        print("usage: python -m app.probe api|worker", file=sys.stderr)
        return 2
    problem = checks[argv[0]]()
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
