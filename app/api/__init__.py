"""HTTP layer: one blueprint per resource, JSON errors everywhere."""

from __future__ import annotations

import logging

import redis
from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

from .. import auth
from ..exceptions import BackendUnavailableError, ServiceError

log = logging.getLogger(__name__)


def register_blueprints(app: Flask) -> None:
    from . import body, evaluations, files, health, openapi

    app.before_request(body.limit_body)
    app.before_request(auth.authenticate)
    app.register_blueprint(files.bp)
    app.register_blueprint(evaluations.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(openapi.bp)

    @app.errorhandler(ServiceError)
    def service_error(exc: ServiceError):
        return jsonify(exc.to_dict()), exc.status

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        body = {"error": exc.name, "details": exc.description}
        if exc.code == 413 and request.max_content_length:
            limit = request.max_content_length
            body = {"error": f"request body too large: at most {limit} bytes here", "details": {"limit-bytes": limit}}
        response = jsonify(body)
        response.status_code = exc.code or 500
        if exc.code == 405 and exc.valid_methods:
            response.headers["Allow"] = ", ".join(exc.valid_methods)
        return response

    @app.errorhandler(redis.exceptions.ConnectionError)
    @app.errorhandler(redis.exceptions.TimeoutError)
    @app.errorhandler(redis.exceptions.BusyLoadingError)
    def redis_down(exc: Exception):
        err = BackendUnavailableError("the job store (Redis) is unreachable; retry shortly", details=type(exc).__name__)
        response = jsonify(err.to_dict())
        response.headers["Retry-After"] = "5"
        return response, err.status

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        log.exception("unhandled error")
        return jsonify({"error": "internal error", "details": type(exc).__name__}), 500
