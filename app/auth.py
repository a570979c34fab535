"""API keys and tenants.

With no keys configured the service is open and every object belongs to the
tenant ``public``. With keys, each API request but ``OPEN_PATHS`` (health, the OpenAPI document and
its Swagger UI page) must carry one (``X-API-Key`` header or ``Authorization: Bearer``), and it sees
only its tenant's objects.
"""

from __future__ import annotations

import hmac

from flask import g, request

from .config import PUBLIC
from .exceptions import NotFoundError, UnauthorizedError
from .extensions import get_settings

__all__ = ["PUBLIC", "authenticate", "check_owner", "tenant"]
OPEN_PATHS = ("/api/health", "/api/openapi.json", "/api/docs")
INTERNAL_PREFIX = "/api/internal/"  # workers' routes: their own token, never an API key (app.api.internal)


def authenticate() -> None:
    """``before_request`` hook: set ``g.tenant`` or refuse the request."""
    keys = get_settings().api_keys
    # The web pages (``app.web``) carry no data: their scripts call the API with the key the user entered.
    internal = request.path.startswith(INTERNAL_PREFIX)
    if not keys or internal or request.path in OPEN_PATHS or not request.path.startswith("/api/"):
        g.tenant = PUBLIC
        return
    supplied = request.headers.get("X-API-Key", "")
    auth = request.headers.get("Authorization", "")
    if not supplied and auth.lower().startswith("bearer "):
        supplied = auth[7:].strip()
    if not supplied:
        raise UnauthorizedError("an API key is required (X-API-Key header or Authorization: Bearer)")
    for key, tenant in keys.items():
        if hmac.compare_digest(key.encode(), supplied.encode()):
            g.tenant = tenant
            return
    raise UnauthorizedError("unknown API key")


def tenant() -> str:
    return g.get("tenant", PUBLIC)


def check_owner(owner: str, what: str) -> None:
    """Another tenant's object answers exactly like a missing one."""
    if owner != tenant():
        raise NotFoundError(f"no {what} with that id")
