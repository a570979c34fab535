"""The HTTP API's application factory (Flask). It never imports torch: the workers
(``worker.py``, ``app.jobs``) do the heavy work."""

from __future__ import annotations

import tempfile
from collections.abc import Mapping
from typing import IO, Any

from flask import Flask, Request, current_app

SPOOL_BYTES = 500 * 1024  # multipart file parts beyond this go to disk (werkzeug's own threshold)


class ServiceRequest(Request):
    """Multipart file parts spool to the data directory's uploads/ folder, not the system's
    temp directory (often a RAM-backed tmpfs): a large upload costs disk, never memory."""

    def _get_file_stream(
        self,
        total_content_length: int | None,
        content_type: str | None,
        filename: str | None = None,
        content_length: int | None = None,
    ) -> IO[bytes]:
        uploads = current_app.config["SERVICE"].data_dir / "uploads"
        uploads.mkdir(parents=True, exist_ok=True)
        return tempfile.SpooledTemporaryFile(max_size=SPOOL_BYTES, mode="rb+", dir=uploads)


def create_app(config: Mapping[str, Any] | None = None) -> Flask:
    """Application factory; ``config`` overrides fields of :class:`app.config.Config`."""
    from . import extensions
    from .api import register_blueprints
    from .config import Config

    app = Flask(__package__)  # "app", as when this lived in the package's __init__
    app.request_class = ServiceRequest
    app.debug = False  # never the debug server or debugger, whatever FLASK_DEBUG says
    settings = Config.from_env().updated(config)
    app.config["SERVICE"] = settings
    app.config["MAX_CONTENT_LENGTH"] = settings.max_upload_mb * 2**20 + 2**20
    # An upload is one file part; other multipart parts are held in memory, so few and small (413 beyond).
    # werkzeug also checks its 64 KiB read buffer against MAX_FORM_MEMORY_SIZE, so that stays well above it.
    app.config["MAX_FORM_PARTS"] = 16
    app.config["MAX_FORM_MEMORY_SIZE"] = 256 * 1024
    app.json.sort_keys = False
    extensions.init_app(app)
    register_blueprints(app)
    from .web import bp as web_pages

    app.register_blueprint(web_pages)
    return app
