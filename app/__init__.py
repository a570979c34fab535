"""Security-evaluation service: accuracy-vs-epsilon curves for ONNX classifiers.

``create_app`` builds the HTTP API. It never imports torch: the workers
(``worker.py``, ``app.jobs``) do the heavy work.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from flask import Flask

__version__ = "1.0.0"


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Application factory; ``config`` overrides fields of :class:`app.config.Config`."""
    from . import extensions
    from .api import register_blueprints
    from .config import Config

    app = Flask(__name__)
    app.debug = False  # never the debug server or debugger, whatever FLASK_DEBUG says
    settings = Config.from_env().updated(config)
    app.config["SERVICE"] = settings
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_mb * 2**20 + 2**20
    app.json.sort_keys = False
    extensions.init_app(app)
    register_blueprints(app)
    return app
