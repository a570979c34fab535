"""Liveness and readiness: Redis reachable, live workers, version."""

from __future__ import annotations

from flask import Blueprint, jsonify
from rq import Worker

from .. import __version__
from ..extensions import get_queue, get_redis

bp = Blueprint("health", __name__, url_prefix="/api")


@bp.get("/health")
def health():
    connection = get_redis()
    try:
        connection.ping()
    except Exception as exc:  # any failure here means "not ready"
        body = {"status": "unavailable", "redis": False, "error": type(exc).__name__, "version": __version__}
        return jsonify(body), 503
    queue = get_queue()
    workers = Worker.all(queue=queue)
    return jsonify(
        {
            "status": "ok",
            "redis": True,
            "workers": len(workers),
            "queued": queue.count,
            "version": __version__,
        }
    )
