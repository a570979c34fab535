"""The OpenAPI 3 description of the API, served at ``/api/openapi.json`` (fuzzed by the tests)."""

from __future__ import annotations

from flask import Blueprint, jsonify

from .. import __version__, paging, schemas
from . import examples, openapi_results

bp = Blueprint("openapi", __name__, url_prefix="/api")

ERROR = {"$ref": "#/components/schemas/Error"}
JSON_ERROR = {"content": {"application/json": {"schema": ERROR}}}


def _errors(*codes: int) -> dict:
    return {str(c): {"description": "error", **JSON_ERROR} for c in codes}


def _ok(description: str, code: int = 200) -> dict:
    return {str(code): {"description": description, "content": {"application/json": {"schema": {"type": "object"}}}}}


NUMBERS = {"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": schemas.MAX_CHANNELS}
REFERENCE = {"type": "string", "minLength": 1, "maxLength": schemas.MAX_REFERENCE_CHARS}
# The request body's documented limits, the same constants the validation enforces
# (the whole body is also limited to MAX_JSON_KB, 256 KiB by default: 413 beyond).
EVALUATION_REQUEST = {
    "type": "object",
    "required": ["trained-model", "dataset"],
    "additionalProperties": False,
    "properties": {
        "trained-model": REFERENCE,
        "dataset": REFERENCE,
        "perturbation-values": {
            "type": "array",
            "items": {"type": "number", "minimum": 0, "maximum": 1},
            "minItems": 1,
            "maxItems": 50,
        },
        "perturbation-type": {"type": "string", "enum": ["max-norm", "random"]},
        "attack": {"type": "string", "enum": list(schemas.ATTACKS)},
        "norm": {"type": "string", "enum": list(schemas.NORMS)},
        "attack-params": {"type": "object", "maxProperties": max(len(p) for p in schemas.ATTACK_PARAMETERS.values())},
        "evaluation-mode": {"type": "string", "enum": ["complete", "fast"]},
        "indexes": {
            "type": "array",
            "items": {"type": "integer", "minimum": 0, "maximum": 10**9},
            "minItems": 1,
            "maxItems": schemas.MAX_INDEXES,
        },
        "preprocessing": {"type": "object", "properties": {"mean": NUMBERS, "std": NUMBERS}, "additionalProperties": False},
        "input-bounds": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2},
        "performance-metric": {"type": "string", "enum": ["classification-accuracy"]},
        "task": {"type": "string", "enum": ["classification"]},
        "batch-size": {"type": "integer", "minimum": 1, "maximum": schemas.MAX_BATCH_SIZE},
        "seed": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1},
        "input-layout": {"type": "string", "enum": list(schemas.LAYOUTS)},
        "output-index": {"type": "integer", "minimum": 0, "maximum": schemas.MAX_OUTPUT_INDEX},
        # The maximum is the service's MAX_SHARDS (400 above it); "fast" takes 1 or "auto" only.
        "shards": {"oneOf": [{"type": "string", "enum": ["auto"]}, {"type": "integer", "minimum": 1}]},
        "shard-size": {"type": "integer", "minimum": schemas.MIN_SHARD_SIZE, "maximum": schemas.MAX_SHARD_SIZE},
        "inspect-samples": {"type": "integer", "minimum": 1, "maximum": schemas.MAX_INSPECT_SAMPLES},
    },
}

# POST /api/adversarial_examples: the evaluation's fields that make sense for one sample, and its index.
EXAMPLE_REQUEST = {
    "type": "object",
    "required": ["trained-model", "dataset", "index"],
    "additionalProperties": False,
    "properties": {
        **{k: v for k, v in EVALUATION_REQUEST["properties"].items() if k in examples.FIELDS},
        "index": {"type": "integer", "minimum": 0, "maximum": schemas.MAX_SAMPLE_INDEX},
    },
}
SAMPLE = {
    "name": "sample",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "position in the selection",
}
IMAGE = {
    "name": "name",
    "in": "path",
    "required": True,
    "schema": {"type": "string"},
    "description": "clean, attribution-clean, adversarial-<k>, difference-<k> or attribution-adversarial-<k> (k: epsilon index)",
}
PNG = {"200": {"description": "a PNG image", "content": {"image/png": {"schema": {"type": "string", "format": "binary"}}}}}

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
KIND = {"name": "kind", "in": "path", "required": True, "schema": {"type": "string", "enum": ["models", "datasets"]}}
UPLOAD = {
    "required": True,
    "content": {
        "multipart/form-data": {
            "schema": {
                "type": "object",
                "required": ["file"],
                "properties": {
                    "file": {
                        "type": "string",
                        "format": "binary",
                        "description": "the .onnx or .h5 file; for a model, also a .zip holding one .onnx and its data files",
                    },
                    "external-data": {
                        "type": "array",
                        "items": {"type": "string", "format": "binary"},
                        "description": "models only: the data file(s) the graph's external data names, under those names",
                    },
                },
            }
        }
    },
}


def document() -> dict:
    doc = {
        "openapi": "3.0.3",
        "info": {"title": "secev security evaluations", "version": __version__},
        "paths": {
            "/api/health": {"get": {"responses": {**_ok("service health"), **_errors(503)}}},
            "/api/{kind}": {
                "parameters": [KIND],
                "get": {"parameters": PAGE, "responses": {**_ok("stored files, a page"), **_errors(400, 401, 404)}},
                "post": {
                    "requestBody": UPLOAD,
                    "responses": {
                        **_ok("a dataset stored and validated (status ready)", 201),
                        **_ok(
                            "stored, checked in the background: a big dataset (status validating, then ready or rejected), "
                            "every model (status verifying, then ready or unsupported)",
                            202,
                        ),
                        **_errors(400, 401, 404, 408, 413, 422),
                    },
                },
            },
            "/api/{kind}/{file_id}": {
                "parameters": [KIND, {"name": "file_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "get": {"responses": {**_ok("one file"), **_errors(401, 404)}},
            },
            "/api/security_evaluations": {
                "get": {
                    "parameters": [
                        {
                            "name": "status",
                            "in": "query",
                            "schema": {"type": "string", "enum": ["queued", "started", "finished", "failed", "canceled"]},
                        },
                        {
                            "name": "include",
                            "in": "query",
                            "description": "summary: each finished evaluation's sec-curve and headline figures",
                            "schema": {"type": "string", "enum": ["summary"]},
                        },
                        *PAGE,
                    ],
                    "responses": {**_ok("evaluations, a page"), **_errors(400, 401)},
                },
                "post": {
                    "requestBody": {"required": True, "content": {"application/json": {"schema": EVALUATION_REQUEST}}},
                    "responses": {**_ok("queued", 202), **_errors(400, 401, 408, 409, 413, 422, 429)},
                },
            },
            "/api/security_evaluations/{job_id}": {
                "parameters": [JOB_ID],
                "get": {"responses": {**_ok("status"), **_errors(401, 404)}},
                "delete": {"responses": {**_ok("deleted"), **_errors(401, 404)}},
            },
            "/api/security_evaluations/{job_id}/output": {
                "parameters": [JOB_ID],
                "get": {"responses": {**_ok("the curve"), "303": {"description": "not finished yet"}, **_errors(401, 404)}},
            },
            "/api/security_evaluations/{job_id}/samples": {
                "parameters": [JOB_ID],
                "get": {"responses": {**_ok("the inspected samples, with image URLs"), **_errors(401, 404, 409)}},
            },
            "/api/security_evaluations/{job_id}/samples/{sample}": {
                "parameters": [JOB_ID, SAMPLE],
                "get": {"responses": {**_ok("one inspected sample"), **_errors(401, 404, 409)}},
            },
            "/api/security_evaluations/{job_id}/samples/{sample}/{name}.png": {
                "parameters": [JOB_ID, SAMPLE, IMAGE],
                "get": {"responses": {**PNG, **_errors(401, 404)}},
            },
            "/api/adversarial_examples": {
                "post": {
                    "requestBody": {"required": True, "content": {"application/json": {"schema": EXAMPLE_REQUEST}}},
                    "responses": {**_ok("queued", 202), **_errors(400, 401, 408, 409, 413, 422, 429)},
                },
            },
            "/api/adversarial_examples/{job_id}": {
                "parameters": [JOB_ID],
                "get": {"responses": {**_ok("status, and the example once finished"), **_errors(401, 404)}},
                "delete": {"responses": {**_ok("deleted"), **_errors(401, 404)}},
            },
            "/api/adversarial_examples/{job_id}/{name}.png": {
                "parameters": [JOB_ID, IMAGE],
                "get": {"responses": {**PNG, **_errors(401, 404)}},
            },
        },
        "components": {
            "schemas": {
                "Error": {"type": "object", "required": ["error"], "properties": {"error": {"type": "string"}, "details": {}}}
            }
        },
    }
    # The results endpoints and bulk delete are described in their own module, merged in here.
    return openapi_results.merge(doc)


@bp.get("/openapi.json")
def openapi():
    return jsonify(document())
