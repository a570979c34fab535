"""The OpenAPI building blocks every path uses: the shared responses (errors with their headers, 201/202
with ``Location``, binary documents) and the JSON Schemas of the records the API answers with (files,
evaluations, pages, health). An evaluation's output and its samples are in ``openapi_outputs``.

Each schema is written next to what it describes and from the same constants (statuses, limits), and
the tests validate real answers of a worker-backed job against them (``tests/test_openapi.py``).
"""

from __future__ import annotations

from typing import Any

from .. import paging, schemas, validation
from ..records import STATUSES

STRING = {"type": "string"}
INTEGER = {"type": "integer"}
COUNT = {"type": "integer", "minimum": 0}
NUMBER = {"type": "number"}
BOOLEAN = {"type": "boolean"}
URL = {"type": "string", "format": "uri"}
TIME = {"type": "number", "description": "seconds since the epoch (UTC)"}
ANY: dict[str, Any] = {}
JOB_ID = {"type": "string", "format": "uuid"}
FILE_ID = {"type": "string", "pattern": "^[0-9a-f]{32}$"}
SHA256 = {"type": "string", "pattern": "^[0-9a-f]{64}$"}


def ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    return {**schema, "nullable": True}


def array(items: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """An array of ``items``; ``extra`` adds keywords (``minItems=2``, ``description=...``)."""
    return {"type": "array", "items": items, **extra}


def obj(required: tuple[str, ...] | list[str], properties: dict[str, Any], description: str = "") -> dict[str, Any]:
    """An object with these properties (more may come: answers grow, clients ignore what they do not know)."""
    out: dict[str, Any] = {"type": "object", **({"required": list(required)} if required else {}), "properties": properties}
    return {**out, "description": description} if description else out


def links(*names: str, optional: tuple[str, ...] = ()) -> dict[str, Any]:
    return obj(names, {n: URL for n in (*names, *optional)})


# -- Responses -------------------------------------------------------------------
HEADERS = {
    "Location": {"description": "the URL of the created resource (303: of the status)", "required": True, "schema": URL},
    "Retry-After": {
        "description": "seconds to wait before retrying",
        "required": True,
        "schema": {"type": "integer", "minimum": 0},
    },
    "Content-Disposition": {"description": "the file name to save the document under", "schema": STRING},
}
# A 409 carries Retry-After only while a file named in the request is still being checked.
RETRY_WHILE_CHECKING = {
    "description": "while a file is being checked: seconds to wait",
    "schema": {"type": "integer", "minimum": 0},
}
ERRORS = {
    400: "Bad request: the error names the problem and details.field the field or query parameter",
    401: "An API key is required or unknown (only when the service has API keys)",
    404: "Not found (another tenant's object answers exactly like a missing one)",
    408: "The request body did not arrive in time",
    409: "Conflict: not finished yet, or a file named in the request still being checked (then with Retry-After)",
    413: "The body is larger than the limit details names",
    422: "The file is not a usable model or dataset (details say why)",
    429: "Too many unfinished evaluations for this API key (MAX_CONCURRENT_JOBS)",
    503: "The job store (Redis) is unreachable or the server is overloaded: retry after Retry-After",
}
HEADERS_OF = {409: {"Retry-After": RETRY_WHILE_CHECKING}, 503: {"Retry-After": {"$ref": "#/components/headers/Retry-After"}}}
RESPONSES = {
    f"Error{code}": {
        "description": text,
        **({"headers": HEADERS_OF[code]} if code in HEADERS_OF else {}),
        "content": {"application/json": {"schema": ref("Error")}},
    }
    for code, text in ERRORS.items()
}


def errors(*codes: int) -> dict[str, Any]:
    return {str(c): {"$ref": f"#/components/responses/Error{c}"} for c in codes}


def json_response(description: str, schema: str | dict[str, Any], code: int = 200, *headers: str) -> dict[str, Any]:
    """A JSON answer with the schema named ``schema`` (or given inline) and these headers."""
    body = ref(schema) if isinstance(schema, str) else schema
    out: dict[str, Any] = {"description": description, "content": {"application/json": {"schema": body}}}
    if headers:
        out["headers"] = {h: {"$ref": f"#/components/headers/{h}"} for h in headers}
    return {str(code): out}


def document_response(description: str, *mimes: str, headers: tuple[str, ...] = ()) -> dict[str, Any]:
    """A 200 whose body is a document (CSV, image, HTML), not JSON."""
    binary = {"schema": {"type": "string", "format": "binary"}}
    out: dict[str, Any] = {"description": description, "content": dict.fromkeys(mimes, binary)}
    if headers:
        out["headers"] = {h: {"$ref": f"#/components/headers/{h}"} for h in headers}
    return {"200": out}


SEE_OTHER = {
    "type": "object",
    "required": ["job_id", "job-status", "status", "message"],
    "properties": {
        "job_id": {"type": "string"},
        "job-status": {"type": "string", "enum": [st for st in STATUSES if st != "finished"]},
        "status": {**URL, "description": "the evaluation's status (also the Location header)"},
        "message": {"type": "string"},
    },
}


def see_other(description: str) -> dict[str, Any]:
    return {
        "303": {
            "description": description,
            "headers": {"Location": {"$ref": "#/components/headers/Location"}},
            "content": {"application/json": {"schema": SEE_OTHER}},
        }
    }


# -- Records ---------------------------------------------------------------------
FILE_STATUSES = ["ready", *validation.PENDING.values(), *validation.FAILED.values()]
# A dimension: a size, or a symbolic name (``batch``), or null where the graph leaves it unnamed.
SHAPE = array({"anyOf": [INTEGER, nullable(STRING)]})
FILE_COMMON = {
    "id": FILE_ID,
    "name": {**STRING, "description": "the uploaded file's name, cleaned (display only)"},
    "sha256": SHA256,
    "size": COUNT,
    "created_at": TIME,
    "status": {"type": "string", "enum": FILE_STATUSES},
    "reason": {**STRING, "description": "why the file was rejected or is unsupported"},
}
STORED_REQUEST = {
    # The request as stored and run: every default filled in (``app.schemas.evaluation_request``).
    **{name: {k: v for k, v in field.items() if k != "default"} for name, field in schemas.FIELDS.items()},
    "attack": {"type": "string", "description": "an attack of GET /api/attacks (noise for perturbation-type random)"},
    "indexes": nullable(array(schemas.SAMPLE_INDEX, description="the samples evaluated; null: all")),
    "perturbation-values": array({"type": "number", "minimum": 0, "maximum": 1}),
    "shards": {"oneOf": [INTEGER, STRING]},
}
PROGRESS = obj(("done", "total"), {"done": COUNT, "total": COUNT}, "attack steps done of the total (0/0 until known)")

SCHEMAS: dict[str, Any] = {
    "Error": obj(("error",), {"error": STRING, "details": {"description": "what the error concerns (a field, a limit...)"}}),
    "Health": obj(
        ("status", "redis", "version"),
        {
            "status": {"type": "string", "enum": ["ok", "unavailable"]},
            "redis": BOOLEAN,
            "workers": {**COUNT, "description": "live workers serving this service's queue"},
            "queued": {**COUNT, "description": "jobs waiting in the queue"},
            "version": STRING,
            "error": {**STRING, "description": "503: why Redis is not reachable"},
        },
    ),
    "Model": obj(
        ("id", "name", "sha256", "size", "created_at", "status"),
        {
            **FILE_COMMON,
            "input-shape": SHAPE,
            "output-shape": SHAPE,
            "output-shapes": array(SHAPE),
            "opset": INTEGER,
            "operators": array(STRING),
            "ends-with-softmax": BOOLEAN,
            "external-data": array(STRING),
            "verification": {"type": "object", "description": "the worker's conversion and comparison with onnxruntime"},
        },
        "an uploaded ONNX model; verifying until a worker has converted and checked it",
    ),
    "Dataset": obj(
        ("id", "name", "sha256", "size", "created_at", "status"),
        {
            **FILE_COMMON,
            "n-samples": COUNT,
            "shape": array(INTEGER),
            "channels-by-layout": obj((), {"nchw": INTEGER, "nhwc": INTEGER}),
            "label-format": {"type": "string", "enum": ["index", "one-hot"]},
            "n-classes": nullable(INTEGER),
            "value-range": nullable(array(NUMBER, minItems=2, maxItems=2)),
        },
        "an uploaded HDF5 dataset; validating while a worker scans a big one",
    ),
    "EvaluationStatus": obj(
        ("job_id", "job-status", "kind", "progress", "request", "created_at", "links"),
        {
            "job_id": JOB_ID,
            "job-status": {"type": "string", "enum": list(STATUSES)},
            "kind": {"type": "string", "enum": ["security-evaluation", "adversarial-example"]},
            "progress": PROGRESS,
            "request": obj(("trained-model", "dataset", "perturbation-values", "attack"), STORED_REQUEST),
            "created_at": TIME,
            "started_at": nullable(TIME),
            "ended_at": nullable(TIME),
            "error": {**STRING, "description": "a failed or canceled evaluation: why"},
            "details": ANY,
            "shards": obj(
                ("count", "shard-size"),
                {"count": INTEGER, "shard-size": INTEGER, **{s: COUNT for s in ("queued", "started", "finished", "failed")}},
                "a sharded evaluation: its shards by status",
            ),
            "links": links("self", "output"),
            "summary": {"$ref": "#/components/schemas/Summary"},
        },
    ),
    "Submitted": obj(
        ("job_id", "job-status", "links"),
        {
            "job_id": JOB_ID,
            "job-status": {"type": "string", "enum": ["queued"]},
            "kind": {"type": "string", "enum": ["adversarial-example"]},
            "links": links("self"),
        },
    ),
    "Deleted": obj(
        ("job_id", "deleted", "was"),
        {"job_id": JOB_ID, "deleted": {"type": "boolean", "enum": [True]}, "was": {"type": "string", "enum": list(STATUSES)}},
    ),
}


def page(name: str, item: str) -> dict[str, Any]:
    """A list page: the items, their count, and while more remain the cursor of the next page and its URL."""
    return obj(
        (name, "count"),
        {
            name: array(ref(item)),
            "count": {**COUNT, "maximum": paging.MAX_LIMIT},
            "next-cursor": {**STRING, "maxLength": paging.MAX_CURSOR_CHARS, "description": "absent on the last page"},
            "links": links("next"),
        },
    )


SCHEMAS.update(
    {
        "ModelPage": page("models", "Model"),
        "DatasetPage": page("datasets", "Dataset"),
        "EvaluationPage": page("evaluations", "EvaluationStatus"),
    }
)
