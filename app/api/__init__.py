"""HTTP layer: one blueprint per resource, JSON errors everywhere."""

from __future__ import annotations

import logging

import redis
from flask import Flask, jsonify
from werkzeug.exceptions import HTTPException

from .. import auth
from ..exceptions import BackendUnavailableError, ServiceError
from . import body as body_limits

log = logging.getLogger(__name__)


def register_blueprints(app: Flask) -> None:
    from . import evaluations, examples, files, health, internal, metrics, openapi, results, samples

    app.before_request(body_limits.limit_body)
    app.before_request(auth.authenticate)
    app.register_blueprint(files.bp)
    app.register_blueprint(evaluations.bp)
    app.register_blueprint(samples.bp)
    app.register_blueprint(examples.bp)
    app.register_blueprint(health.bp)
    app.register_blueprint(openapi.bp)
    app.register_blueprint(results.bp)
    app.register_blueprint(internal.bp)  # workers on other hosts
    app.register_blueprint(metrics.bp)  # /metrics, at the root

    @app.errorhandler(ServiceError)
    def service_error(exc: ServiceError):
        return jsonify(exc.to_dict()), exc.status

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        body = {"error": exc.name, "details": exc.description}
        if exc.code == 413:
            body = body_limits.too_large()
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
