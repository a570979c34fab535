"""Security-evaluation service: accuracy-vs-epsilon curves for ONNX classifiers.

``create_app`` builds the HTTP API. It never imports torch: the workers
(``worker.py``, ``app.jobs``) do the heavy work.
"""

from __future__ import annotations

from typing import Any

__version__ = "1.0.0"

_FACTORY = ("create_app", "ServiceRequest", "SPOOL_BYTES")


def __getattr__(name: str) -> Any:
    # Flask (about 0.2 s of imports) only where the API is built: ``python -m app evaluate``
    # and the worker import this package too, and need none of it.
    if name in _FACTORY:
        from . import factory

        return getattr(factory, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
