"""The OpenAPI 3 description of the API, served at ``/api/openapi.json`` (Swagger UI at ``/api/docs``,
served by ``app.web``; fuzzed and checked against real answers by the tests).

Request bodies are described by ``app.schemas.request_schema``, generated from the same field table the
validator reads its ranges, choices and defaults from, with this service's own limits; response bodies by
the schemas of ``openapi_schemas`` and ``openapi_outputs``; the results endpoints by ``openapi_results``.
``/api/internal/`` (worker-only routes) is deliberately not part of the public document.
"""

from __future__ import annotations

from typing import Any

import redis
from flask import Blueprint, jsonify

from .. import __version__, paging, plugin_catalog, schemas
from ..extensions import get_redis, get_settings
from ..records import STATUSES
from . import examples, openapi_outputs, openapi_results
from .openapi_schemas import (
    HEADERS,
    RESPONSES,
    SCHEMAS,
    document_response,
    errors,
    json_response,
    see_other,
)

bp = Blueprint("openapi", __name__, url_prefix="/api")

PAGE = [
    {
        "name": "limit",
        "in": "query",
        "description": f"items per page (default {paging.DEFAULT_LIMIT})",
        "schema": {"type": "integer", "minimum": 1, "maximum": paging.MAX_LIMIT},
    },
    {
        "name": "cursor",
        "in": "query",
        "description": "the next-cursor of the previous page",
        "schema": {"type": "string", "maxLength": paging.MAX_CURSOR_CHARS},
    },
]
JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
FILE_ID = {"name": "file_id", "in": "path", "required": True, "schema": {"type": "string"}}
SAMPLE = {"name": "sample", "in": "path", "required": True, "schema": {"type": "string"}, "description": "position in selection"}
IMAGE = {
    "name": "name",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "clean, attribution-clean, adversarial-<k>, difference-<k> or attribution-adversarial-<k> (k: epsilon index)",
}
PNG = document_response("a PNG image (Cache-Control: private, max-age=3600: a finished job's images never change)", "image/png")
FILE_PART = {"type": "string", "format": "binary"}
UPLOAD_ERRORS = errors(400, 401, 408, 413, 422, 503)
SUBMIT_ERRORS = errors(400, 401, 408, 409, 413, 422, 429, 503)
# Open to everyone even with API keys (``app.auth.OPEN_PATHS``).
PUBLIC: dict[str, Any] = {"security": []}


def upload_body(kind: str) -> dict[str, Any]:
    """The multipart form of an upload: the file, and for a model its external data."""
    properties: dict[str, Any] = {"file": {**FILE_PART, "description": f"the {kind} file"}}
    if kind == "model":
        properties["file"]["description"] = "the .onnx file, or a .zip holding one .onnx and its data files"
        properties["external-data"] = {
            "type": "array",
            "items": FILE_PART,
            "description": "the data file(s) the graph's external data names, under those names",
        }
    else:
        properties["file"]["description"] = "the .h5/.hdf5 file: samples and labels (README, Datasets)"
    schema = {"type": "object", "required": ["file"], "properties": properties}
    return {"required": True, "content": {"multipart/form-data": {"schema": schema}}}


def file_paths(kind: str, record: str) -> dict[str, Any]:
    """``/api/models`` or ``/api/datasets`` (one route, ``<any(models, datasets):kind>``, documented as two
    so that each answers with its own record)."""
    stored = "stored; a worker verifies it (status verifying, then ready or unsupported)"
    created = {}
    if kind == "dataset":
        stored = "stored; too big to scan inline, a worker scans it (status validating, then ready or rejected)"
        created = json_response("stored and validated (status ready)", record, 201, "Location")
    return {
        f"/api/{kind}s": {
            "get": {
                "summary": f"list your {kind}s, a page at a time",
                "parameters": PAGE,
                "responses": {**json_response(f"{kind}s, oldest first", f"{record}Page"), **errors(400, 401, 503)},
            },
            "post": {
                "summary": f"upload a {kind}",
                "requestBody": upload_body(kind),
                "responses": {**created, **json_response(stored, record, 202, "Location"), **UPLOAD_ERRORS},
            },
        },
        f"/api/{kind}s/{{file_id}}": {
            "parameters": [FILE_ID],
            "get": {"summary": f"one {kind}", "responses": {**json_response(f"the {kind}", record), **errors(401, 404, 503)}},
        },
    }


def paths(max_values: int, max_shards: int, plugins: tuple[str, ...] = ()) -> dict[str, Any]:
    evaluation_request = schemas.request_schema(
        schemas.REQUEST_FIELDS, max_values=max_values, max_shards=max_shards, plugins=plugins
    )
    example_request = schemas.request_schema(
        examples.FIELDS, max_values=max_values, max_shards=1, extra={"index": schemas.SAMPLE_INDEX}, plugins=plugins
    )
    deleted = {**json_response("deleted (a queued job canceled, a running one stopped)", "Deleted"), **errors(401, 404, 503)}
    return {
        "/api/health": {
            "get": {
                **PUBLIC,
                "summary": "liveness and readiness",
                "responses": {
                    **json_response("Redis reachable", "Health"),
                    **json_response("Redis unreachable (status unavailable)", "Health", 503),
                },
            }
        },
        "/api/openapi.json": {
            "get": {**PUBLIC, "summary": "this document", "responses": json_response("OpenAPI 3.0", {"type": "object"})}
        },
        "/api/docs": {
            "get": {**PUBLIC, "summary": "Swagger UI of this document", "responses": document_response("page", "text/html")}
        },
        **file_paths("model", "Model"),
        **file_paths("dataset", "Dataset"),
        "/api/security_evaluations": {
            "get": {
                "summary": "list your evaluations, a page at a time",
                "parameters": [
                    {"name": "status", "in": "query", "schema": {"type": "string", "enum": list(STATUSES)}},
                    {
                        "name": "include",
                        "in": "query",
                        "description": "summary: each finished evaluation's sec-curve and headline figures",
                        "schema": {"type": "string", "enum": ["summary"]},
                    },
                    *PAGE,
                ],
                "responses": {**json_response("evaluations, oldest first", "EvaluationPage"), **errors(400, 401, 503)},
            },
            "post": {
                "summary": "submit a security evaluation",
                "requestBody": {"required": True, "content": {"application/json": {"schema": evaluation_request}}},
                "responses": {**json_response("queued", "Submitted", 202, "Location"), **SUBMIT_ERRORS},
            },
        },
        "/api/security_evaluations/{job_id}": {
            "parameters": [JOB_ID],
            "get": {"summary": "status", "responses": {**json_response("status", "EvaluationStatus"), **errors(401, 404, 503)}},
            "delete": {"summary": "delete (cancel, stop)", "responses": deleted},
        },
        "/api/security_evaluations/{job_id}/output": {
            "parameters": [JOB_ID],
            "get": {
                "summary": "the finished evaluation's output",
                "responses": {
                    **json_response("the curve, its figures, checks and inspection", "Output"),
                    **see_other("not finished yet: Location is its status"),
                    **errors(401, 404, 503),
                },
            },
        },
        "/api/security_evaluations/{job_id}/samples": {
            "parameters": [JOB_ID],
            "get": {
                "summary": "the inspected samples",
                "responses": {**json_response("the samples, with image URLs", "SampleIndex"), **errors(401, 404, 409, 503)},
            },
        },
        "/api/security_evaluations/{job_id}/samples/{sample}": {
            "parameters": [JOB_ID, SAMPLE],
            "get": {
                "summary": "one inspected sample",
                "responses": {**json_response("sample", "Sample"), **errors(401, 404, 409, 503)},
            },
        },
        "/api/security_evaluations/{job_id}/samples/{sample}/{name}.png": {
            "parameters": [JOB_ID, SAMPLE, IMAGE],
            "get": {"summary": "an inspection image", "responses": {**PNG, **errors(401, 404, 503)}},
        },
        "/api/adversarial_examples": {
            "post": {
                "summary": "attack one sample at a few budgets",
                "requestBody": {"required": True, "content": {"application/json": {"schema": example_request}}},
                "responses": {**json_response("queued", "Submitted", 202, "Location"), **SUBMIT_ERRORS},
            },
        },
        "/api/adversarial_examples/{job_id}": {
            "parameters": [JOB_ID],
            "get": {
                "summary": "status, and the example once finished",
                "responses": {**json_response("status and example", "Example"), **errors(401, 404, 503)},
            },
            "delete": {"summary": "delete", "responses": deleted},
        },
        "/api/adversarial_examples/{job_id}/{name}.png": {
            "parameters": [JOB_ID, IMAGE],
            "get": {"summary": "an image of the example", "responses": {**PNG, **errors(401, 404, 503)}},
        },
    }


def live_plugins(prefix: str) -> tuple[str, ...]:
    """The plugin attacks live workers offer now (the document is built per request, so it says what a
    submit accepts at this moment); none while Redis is unreachable: the document still answers."""
    try:
        return tuple(plugin_catalog.offered(get_redis(), prefix))
    except redis.RedisError:
        return ()


def document() -> dict[str, Any]:
    settings = get_settings()
    doc: dict[str, Any] = {
        "openapi": "3.0.3",
        "info": {
            "title": "secev security evaluations",
            "version": __version__,
            "description": "Evaluate ONNX image classifiers against adversarial attacks. Errors are JSON "
            '{"error": ..., "details": ...}. With API keys configured, send one as X-API-Key or Authorization: Bearer.',
        },
        # Keys are optional (a service without API keys is open): {} first says "no key" is a choice.
        "security": [{}, {"ApiKey": []}, {"Bearer": []}],
        "paths": paths(settings.max_perturbation_values, settings.max_shards, live_plugins(settings.key_prefix)),
        "components": {
            "schemas": {**SCHEMAS, **openapi_outputs.SCHEMAS},
            "responses": RESPONSES,
            "headers": HEADERS,
            "securitySchemes": {
                "ApiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"},
                "Bearer": {"type": "http", "scheme": "bearer"},
            },
        },
    }
    # The results endpoints and bulk delete are described in their own module, merged in here.
    openapi_results.merge(doc)
    for path, item in doc["paths"].items():
        for method in item.keys() - {"parameters"}:
            item[method].setdefault("tags", [tag_of(path)])
            # Any request may meet an overloaded server (gunicorn's JSON 503 with Retry-After: 1).
            item[method]["responses"].setdefault("503", errors(503)["503"])
    return doc


TAGS = {
    "models": "files",
    "datasets": "files",
    "security_evaluations": "evaluations",
    "adversarial_examples": "examples",
    "attacks": "attacks",
}
RESULTS = ("/output/csv", "/plot.png", "/plot.svg", "/report")


def tag_of(path: str) -> str:
    """Swagger UI's group of an operation: files, evaluations, results, examples, attacks, service."""
    if path.endswith(RESULTS) or path == "/api/plots":
        return "results"
    return TAGS.get(path.split("/")[2], "service")


@bp.get("/openapi.json")
def openapi():
    return jsonify(document())
