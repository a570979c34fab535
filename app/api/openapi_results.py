"""The OpenAPI description of the results endpoints (``app.api.results``) and bulk delete, with their
response schemas; ``app.api.openapi`` merges it into the document."""

from __future__ import annotations

from typing import Any

from .. import attack_catalog
from ..records import STATUSES
from .evaluations import MAX_BULK_DELETE
from .openapi_schemas import document_response, errors, json_response
from .results import MAX_COMPARED


def _json(description: str, ref: str) -> dict[str, Any]:
    return json_response(description, ref)


def _body(description: str, *mimes: str) -> dict[str, Any]:
    """A 200 whose body is a document (CSV, image, HTML), not JSON, sent inline."""
    return document_response(description, *mimes, headers=("Content-Disposition",))


JOB_ID = {"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}
BASELINE = {
    "name": "baseline",
    "in": "query",
    "description": "the id of a finished random-noise evaluation (perturbation-type random) of the same model and dataset",
    "schema": {"type": "string"},
}
PLOT_ERRORS = errors(400, 401, 404, 409, 503)


SCHEMAS: dict[str, Any] = {
    "AttackParameter": {
        "type": "object",
        "required": ["name", "type", "default", "description"],
        "properties": {
            "name": {"type": "string"},
            "type": {"type": "string", "enum": ["integer", "number", "boolean", "string"]},
            "default": {},
            "minimum": {"type": "number", "description": "integers: inclusive; numbers: exclusive (see exclusive-minimum)"},
            "maximum": {"type": "number", "description": "inclusive"},
            "exclusive-minimum": {"type": "boolean"},
            "choices": {"type": "array", "items": {"type": "string"}},
            "description": {"type": "string"},
        },
    },
    "Attack": {
        "type": "object",
        "required": ["name", "title", "perturbation-type", "norms", "description", "paper", "parameters", "defaults"],
        "properties": {
            "name": {"type": "string", "description": "the request's attack (or, for noise, perturbation-type random)"},
            "title": {"type": "string"},
            "perturbation-type": {"type": "string", "enum": list(attack_catalog.PERTURBATION_TYPES)},
            "norms": {"type": "array", "items": {"type": "string", "enum": list(attack_catalog.NORMS)}},
            "description": {"type": "string"},
            "paper": {
                "type": "object",
                "nullable": True,
                "properties": {k: {"type": "string"} for k in ("title", "authors", "venue", "url")},
            },
            "parameters": {"type": "array", "items": {"$ref": "#/components/schemas/AttackParameter"}},
            "defaults": {"type": "object", "description": "attack-params as a request gets them when it gives none"},
            "plugin": {"type": "boolean", "description": "offered by a plugin installed on live workers (not built in)"},
            "workers": {"type": "integer", "description": "plugins only: how many live workers offer it"},
        },
    },
    "AttackList": {
        "type": "object",
        "required": ["attacks"],
        "properties": {
            "attacks": {"type": "array", "items": {"$ref": "#/components/schemas/Attack"}},
            "perturbation-types": {"type": "array", "items": {"type": "string"}},
            "perturbation-type": {"type": "string"},
            "defenses": {
                "type": "object",
                "description": "the preprocessing defenses a request may name in defenses, and defense-params",
                "properties": {
                    "max-defenses": {"type": "integer"},
                    "defenses": {"type": "array", "items": {"type": "object"}},
                    "defense-params": {"type": "array", "items": {"$ref": "#/components/schemas/AttackParameter"}},
                },
            },
        },
    },
    "BulkDelete": {
        "type": "object",
        "required": ["deleted", "ids", "evaluations", "more"],
        "properties": {
            "deleted": {"type": "integer", "minimum": 0, "maximum": MAX_BULK_DELETE},
            "ids": {"type": "array", "items": {"type": "string"}},
            "evaluations": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"job_id": {"type": "string"}, "was": {"type": "string", "enum": list(STATUSES)}},
                },
            },
            "more": {"type": "boolean", "description": "more matching evaluations may remain: call again"},
        },
    },
}

CSV_DESCRIPTION = (
    "one row per epsilon: epsilon, epsilon-absolute, n, accuracy, and when the output has figures "
    "accuracy-ci95-low/-high, attack-success-rate and its interval, mean-true-confidence, accuracy-class-<c>"
)

PATHS: dict[str, Any] = {
    "/api/security_evaluations/{job_id}/output/csv": {
        "parameters": [JOB_ID],
        "get": {"responses": {**_body(CSV_DESCRIPTION, "text/csv"), **errors(401, 404, 409, 503)}},
    },
    "/api/security_evaluations/{job_id}/plot.png": {
        "parameters": [JOB_ID],
        "get": {"parameters": [BASELINE], "responses": {**_body("accuracy against epsilon", "image/png"), **PLOT_ERRORS}},
    },
    "/api/security_evaluations/{job_id}/plot.svg": {
        "parameters": [JOB_ID],
        "get": {"parameters": [BASELINE], "responses": {**_body("accuracy against epsilon", "image/svg+xml"), **PLOT_ERRORS}},
    },
    "/api/security_evaluations/{job_id}/report": {
        "parameters": [JOB_ID],
        "get": {
            "parameters": [
                BASELINE,
                {"name": "download", "in": "query", "description": "1: served as an attachment",
                 "schema": {"type": "string", "enum": ["1"]}},
            ],
            "responses": {
                **_body("a self-contained HTML page (no scripts, images inline)", "text/html"),
                **errors(400, 401, 404, 409, 503),
            },
        },
    },
    "/api/plots": {
        "get": {
            "parameters": [
                {"name": "jobs", "in": "query", "required": True, "schema": {"type": "string"},
                 "description": f"1 to {MAX_COMPARED} finished evaluation ids, comma separated"},
                {"name": "format", "in": "query", "schema": {"type": "string", "enum": ["png", "svg"]}},
            ],
            "responses": {**_body("the evaluations' curves on one plot", "image/png", "image/svg+xml"), **PLOT_ERRORS},
        }
    },
    "/api/attacks": {"get": {"responses": {**_json("every attack and its parameters", "AttackList"), **errors(401)}}},
    "/api/attacks/{perturbation_type}": {
        "parameters": [{"name": "perturbation_type", "in": "path", "required": True, "schema": {"type": "string"}}],
        "get": {"responses": {**_json("the attacks of one perturbation type", "AttackList"), **errors(401, 404)}},
    },
}

OPERATIONS: dict[str, dict[str, Any]] = {
    "/api/security_evaluations": {
        "delete": {
            "description": f"delete up to {MAX_BULK_DELETE} of the caller's evaluations in the given statuses "
            "(each as DELETE /{job_id} does: queued ones canceled, running ones stopped)",
            "parameters": [
                {"name": "status", "in": "query", "required": True, "schema": {"type": "string"},
                 "description": f"one or more of {', '.join(STATUSES)}, comma separated"},
            ],
            "responses": {**_json("what was deleted", "BulkDelete"), **errors(400, 401, 503)},
        }
    }
}


def merge(document: dict[str, Any]) -> dict[str, Any]:
    """Add these paths, operations on existing paths, and schemas to ``document``."""
    document["paths"].update(PATHS)
    for path, operations in OPERATIONS.items():
        document["paths"].setdefault(path, {}).update(operations)
    document["components"]["schemas"].update(SCHEMAS)
    return document
