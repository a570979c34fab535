"""``GET /metrics``: Prometheus text format, read from Redis at each scrape (``app.metrics``).

At the root, not under ``/api`` (Prometheus' default path), and outside the API keys: the
numbers are aggregates (no tenant, key or file name). With ``METRICS_TOKEN`` set it answers only
``Authorization: Bearer <METRICS_TOKEN>`` (Prometheus' ``authorization`` setting), else a JSON 401.
"""

from __future__ import annotations

import hmac

from flask import Blueprint, Response, request
from prometheus_client import CONTENT_TYPE_LATEST

from .. import metrics
from ..exceptions import UnauthorizedError
from ..extensions import get_queue, get_records, get_settings

bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def scrape():
    token = get_settings().metrics_token
    if token:
        auth = request.headers.get("Authorization", "")
        supplied = auth[7:].strip() if auth.lower().startswith("bearer ") else ""
        if not hmac.compare_digest(supplied.encode(), token.encode()):
            raise UnauthorizedError("/metrics needs the METRICS_TOKEN", {"header": "Authorization: Bearer <METRICS_TOKEN>"})
    return Response(metrics.exposition(get_records(), get_queue()), content_type=CONTENT_TYPE_LATEST)
