"""Checking real answers against the OpenAPI document: which documented path an answer belongs to, and
whether its status, media type, required headers and JSON body are the ones documented there."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from openapi_schema_validator import OAS30Validator, oas30_format_checker


@dataclass
class Answer:
    """One answer as a client got it (recorded by an ``after_request`` hook)."""

    method: str
    path: str
    status: int
    mimetype: str
    headers: dict[str, str]
    body: bytes


def record_answers(flask_app, into: list[Answer]) -> None:
    """Record every answer ``flask_app`` gives from now on into ``into``."""
    from flask import request

    @flask_app.after_request
    def keep(response):
        if request.path.startswith("/api/"):
            response.direct_passthrough = False  # a streamed file is read here once; the client still gets it
            body = response.get_data()
            into.append(
                Answer(request.method, request.path, response.status_code, response.mimetype or "", dict(response.headers), body)
            )
        return response


def path_of(doc: dict[str, Any], path: str) -> str:
    """The documented path template ``path`` is an instance of (exactly one)."""
    found = [t for t in doc["paths"] if re.fullmatch(re.sub(r"\\\{[^}]+\\\}", "[^/]+", re.escape(t)), path)]
    assert len(found) == 1, (path, found)
    return found[0]


def resolve(doc: dict[str, Any], node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        parts = node["$ref"].removeprefix("#/").split("/")
        node = doc
        for part in parts:
            node = node[part]
    return node


def check(doc: dict[str, Any], answer: Answer) -> tuple[str, str, int]:
    """Assert ``answer`` is documented and conforms; return (path template, method, status)."""
    template = path_of(doc, answer.path)
    operation = doc["paths"][template][answer.method.lower()]
    where = f"{answer.method} {answer.path} -> {answer.status}"
    assert str(answer.status) in operation["responses"], f"{where}: status not documented"
    documented = resolve(doc, operation["responses"][str(answer.status)])
    for name, header in documented.get("headers", {}).items():
        if resolve(doc, header).get("required"):
            assert name in answer.headers, f"{where}: header {name} missing"
    content = documented.get("content")
    if not content:
        assert answer.status in (204, 303) or not answer.body, where
        return template, answer.method, answer.status
    assert answer.mimetype in content, f"{where}: {answer.mimetype} not among {list(content)}"
    schema = content[answer.mimetype]["schema"]
    if answer.mimetype == "application/json":
        validator = OAS30Validator({**schema, "components": doc["components"]}, format_checker=oas30_format_checker)
        problems = [f"{list(e.absolute_path)}: {e.message[:200]}" for e in validator.iter_errors(json.loads(answer.body))]
        assert not problems, f"{where}: {problems[:5]}"
    else:
        assert schema == {"type": "string", "format": "binary"} and answer.body, where
    return template, answer.method, answer.status
