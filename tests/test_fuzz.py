"""Hostile input: the API fuzzed from its own OpenAPI document."""

from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings

from app import create_app

COUNT = {"requests": 0, "5xx": [], "non_json_4xx": []}


@pytest.fixture(scope="module")
def fuzz_app(redis_server, appdata):
    # A queue no worker listens to: fuzzed submissions stay queued and cost nothing.
    app = create_app({"redis_url": redis_server.url, "appdata": str(appdata), "queue_name": "fuzz"})

    @app.after_request
    def count(response):
        COUNT["requests"] += 1
        if response.status_code >= 500:
            COUNT["5xx"].append(response.status_code)
        elif response.status_code >= 400 and not response.is_json:
            COUNT["non_json_4xx"].append(response.status_code)
        return response

    return app


def test_fuzzed_requests_never_get_5xx_and_4xx_are_json(fuzz_app):
    schema = schemathesis.openapi.from_wsgi("/api/openapi.json", fuzz_app)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 9
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck), derandomize=True, database=None)
        def run(case):
            response = case.call()
            assert response.status_code < 500, (case.method, case.path, response.text[:300])
            if response.status_code >= 400:
                body = response.json()
                assert isinstance(body, dict) and body.get("error"), response.text[:300]

        run()
    assert COUNT["requests"] >= 1000, COUNT["requests"]
    assert COUNT["5xx"] == [] and COUNT["non_json_4xx"] == []


BASE = b'"trained-model": "m.onnx", "dataset": "d.h5"'


def with_base(fields: str) -> bytes:
    return b"{" + BASE + (b", " + fields.encode() if fields else b"") + b"}"


def many(n: int, item: str = "1") -> str:
    return "[" + ", ".join([item] * n) + "]"


# (name, body, content type, status, phrase the error names): hostile bodies built by hand.
HOSTILE_BODIES = [
    ("not UTF-8", b'{"trained-model": "\xff\xfe"}', "application/json", 400, "UTF-8"),
    ("UTF-16", '{"dataset": "d.h5"}'.encode("utf-16"), "application/json", 400, "UTF-8"),
    ("byte-order mark", b"\xef\xbb\xbf{}", "application/json", 400, "not valid JSON"),
    ("duplicate keys", b'{"dataset": "a.h5", "dataset": "b.h5"}', "application/json", 400, "duplicate key 'dataset'"),
    ("NaN literal", with_base('"seed": NaN'), "application/json", 400, "NaN"),
    ("Infinity literal", with_base('"perturbation-values": [Infinity]'), "application/json", 400, "Infinity"),
    ("-Infinity literal", with_base('"input-bounds": [-Infinity, 1]'), "application/json", 400, "-Infinity"),
    ("float overflowing to inf", with_base('"perturbation-values": [1e999]'), "application/json", 400, "out of range"),
    ("integer literal of 5000 digits", with_base('"seed": 1' + "0" * 5000), "application/json", 400, "5001 digits"),
    ("integer literal of 21 digits", with_base('"indexes": [1' + "0" * 20 + "]"), "application/json", 400, "too large"),
    (
        "20-digit integer as a number",
        with_base('"perturbation-values": [99999999999999999999]'),
        "application/json",
        400,
        "[0, 1]",
    ),
    ("integer above the range", with_base('"seed": 10000000000000000000'), "application/json", 400, "between"),
    ("top-level array", b'[{"dataset": "d.h5"}]', "application/json", 400, "got an array"),
    ("top-level string", b'"d.h5"', "application/json", 400, "got a string"),
    ("top-level null", b"null", "application/json", 400, "got null"),
    ("empty body", b"", "application/json", 400, "empty"),
    ("whitespace body", b" \n\t ", "application/json", 400, "empty"),
    ("syntax error", b'{"dataset": }', "application/json", 400, "not valid JSON"),
    ("truncated", with_base("")[:-1], "application/json", 400, "not valid JSON"),
    ("wrong content type", with_base(""), "text/plain", 400, "Content-Type"),
    ("arrays nested 100000 deep", b"[" * 100_000 + b"]" * 100_000, "application/json", 400, "nested too deeply"),
    ("objects nested 40000 deep", b'{"a":' * 40_000 + b"1" + b"}" * 40_000, "application/json", 400, "nested too deeply"),
    ("nested 20 deep inside a field", with_base('"preprocessing": ' + "[" * 20 + "]" * 20), "application/json", 400, "nested"),
    ("body over the JSON limit", with_base('"x": "' + "a" * 300_000 + '"'), "application/json", 413, "too large"),
    ("indexes over the cap", with_base('"indexes": ' + many(10_001)), "application/json", 400, "at most 10000"),
    (
        "perturbation-values over the cap",
        with_base('"perturbation-values": ' + many(51, "0.5")),
        "application/json",
        400,
        "at most 50",
    ),
    (
        "preprocessing over the cap",
        with_base(f'"preprocessing": {{"mean": {many(17)}, "std": {many(17)}}}'),
        "application/json",
        400,
        "at most 16",
    ),
    ("input-bounds of three", with_base('"input-bounds": [0, 1, 2]'), "application/json", 400, "input-bounds"),
    (
        "5000 unknown attack-params",
        with_base('"attack-params": {' + ", ".join(f'"k{i}": 1' for i in range(5000)) + "}"),
        "application/json",
        400,
        "not accepted",
    ),
    (
        "5000 unknown fields",
        b"{" + BASE + b", " + ", ".join(f'"f{i}": 1' for i in range(5000)).encode() + b"}",
        "application/json",
        400,
        "unknown fields",
    ),
    (
        "NUL in a file name",
        b'{"trained-model": "m\\u0000.onnx", "dataset": "d.h5"}',
        "application/json",
        400,
        "control characters",
    ),
    ("unpaired surrogate", b'{"trained-model": "\\ud800.onnx", "dataset": "d.h5"}', "application/json", 400, "surrogates"),
    ("attack as a list", with_base('"attack": ["pgd"]'), "application/json", 400, "must be one of"),
    ("attack-params as a list", with_base('"attack-params": [1]'), "application/json", 400, "expected an object"),
    ("indexes of booleans", with_base('"indexes": [true]'), "application/json", 400, "integer"),
    ("batch-size as a float", with_base('"batch-size": 1.5'), "application/json", 400, "integer"),
]


@pytest.mark.parametrize("name,body,content_type,status,phrase", HOSTILE_BODIES, ids=[c[0] for c in HOSTILE_BODIES])
def test_hostile_request_bodies_get_a_4xx_naming_the_problem(client, name, body, content_type, status, phrase):
    r = client.post("/api/security_evaluations", data=body, content_type=content_type)
    assert r.status_code == status, r.get_data()[:300]
    error = r.get_json()
    assert phrase in error["error"], error
    assert len(r.get_data()) < 2000, "an error must not echo the body back"
