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
