"""The OpenAPI document (issue 10): valid OpenAPI 3, every route documented with every method, request
schemas that are the validator's own table, real answers of a worker-backed job that conform to their
documented schemas, and Swagger UI at /api/docs (vendored, rendered by a real Chromium under the CSP)."""

from __future__ import annotations

import hashlib
import io
import re
import time
from pathlib import Path

import pytest
from browser import chrome, console_errors, require_browser, wait_for
from openapi_check import Answer, check, record_answers
from openapi_spec_validator import validate

from app.redis_server import free_port
from conftest import ROOT, queue_client, start_api, stop_process, upload_model

BASE = "/api/security_evaluations"
KEY = "openapi-test-key-0b6d41"
SWAGGER = ROOT / "app" / "web" / "static" / "swagger-ui"
PRIVATE = "/api/internal/"  # worker-only routes: deliberately not in the public document


def test_document_is_valid_and_documents_every_route_with_every_method(client):
    doc = client.get("/api/openapi.json").get_json()
    validate(doc)  # openapi-spec-validator: the whole document against the OpenAPI 3.0 schema
    adapter = client.application.url_map.bind("localhost")
    documented = set()
    for template, item in doc["paths"].items():
        params = {p["name"]: p for p in item.get("parameters", [])}
        path = template
        for name in re.findall(r"\{([^}]+)\}", template):
            values = params[name]["schema"].get("enum", ["x"])
            path = path.replace(f"{{{name}}}", str(values[0]))
        for method in set(item) & {"get", "post", "put", "patch", "delete"}:
            endpoint, _ = adapter.match(path, method=method.upper())  # a documented operation the API does not have raises
            documented.add((endpoint, method.upper()))
            for status, response in item[method]["responses"].items():
                assert response.get("$ref") or response.get("content") or status in ("204", "303"), (template, status)
                body = (response.get("content") or {}).get("application/json", {}).get("schema")
                assert body != {"type": "object"} or template == "/api/openapi.json", f"{template} {status}: undescribed"
    routes = {
        (rule.endpoint, method)
        for rule in client.application.url_map.iter_rules()
        if rule.rule.startswith("/api/") and not rule.rule.startswith(PRIVATE)
        for method in rule.methods - {"HEAD", "OPTIONS"}
    }
    assert routes - documented == set()
    assert len(routes) >= 24


def test_request_schemas_are_the_validators_table(settings):
    """The published ranges, choices and limits are exactly what the validator accepts, with this service's settings."""
    from app import create_app, schemas
    from app.exceptions import ValidationError

    client = create_app({**settings, "max_perturbation_values": 7, "max_shards": 3}).test_client()
    doc = client.get("/api/openapi.json").get_json()
    body = doc["paths"][BASE]["post"]["requestBody"]["content"]["application/json"]["schema"]
    fields = body["properties"]
    assert tuple(fields) == schemas.REQUEST_FIELDS and body["additionalProperties"] is False
    assert fields["perturbation-values"]["maxItems"] == 7 and fields["shards"]["oneOf"][1]["maximum"] == 3
    base = {"trained-model": "m.onnx", "dataset": "d.h5"}

    def run(name, value):
        return schemas.evaluation_request({**base, name: value}, max_values=7, max_shards=3)[name]

    checked = 0
    for name, field in fields.items():
        if field.get("type") == "integer":
            lo, hi = field["minimum"], field["maximum"]
            assert run(name, lo) == lo and run(name, hi) == hi
            for bad in (lo - 1, hi + 1):
                with pytest.raises(ValidationError, match=f"^{name}: must be between {lo} and {hi}, got {bad}$"):
                    run(name, bad)
            checked += 1
        elif "enum" in field:
            for choice in field["enum"]:
                assert run(name, choice) == choice
            with pytest.raises(ValidationError, match=f"^{name}: must be one of {re.escape(str(field['enum']))}"):
                run(name, "bogus")
            checked += 1
        if "default" in field and name != "shards":
            assert schemas.evaluation_request(base)[name] == field["default"], name
    assert checked == 12
    # Over HTTP, the settings' limits as published.
    r = client.post(BASE, json={**base, "perturbation-values": [i / 10 for i in range(1, 9)]})
    assert r.status_code == 400 and r.get_json()["error"] == "perturbation-values: at most 7 values, got 8"
    example = doc["paths"]["/api/adversarial_examples"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert example["required"] == ["trained-model", "dataset", "index"] and example["properties"]["index"] == schemas.SAMPLE_INDEX


def wait(client, path: str, statuses=("finished", "failed", "canceled"), timeout: float = 180) -> set[str]:
    """Poll a status until it ends; the statuses seen on the way."""
    seen, deadline = set(), time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = client.get(path).get_json()["job-status"]
        seen.add(status)
        if status in statuses:
            return seen
        time.sleep(0.05)
    raise AssertionError(f"{path} did not end: {seen}: {client.get(path).get_json()}")


def upload(client, kind: str, name: str, content: bytes):
    return client.post(f"/api/{kind}", data={"file": (io.BytesIO(content), name)}, content_type="multipart/form-data")


def test_real_answers_of_a_worker_backed_job_conform_to_the_document(app, client, settings, worker, assets):
    from app import create_app

    answers: list[Answer] = []
    record_answers(app, answers)
    nobody = queue_client(settings, "openapi-nobody")  # a queue no worker serves: its job stays queued
    record_answers(nobody.application, answers)
    keyed = create_app({**settings, "api_keys": {KEY: "alice"}}).test_client()
    record_answers(keyed.application, answers)

    assert client.get("/api/health").status_code == 200
    model = upload_model(client, assets.model)  # 202 verifying, then ready
    datasets = [upload(client, "datasets", f"val{i}.h5", assets.dataset.read_bytes()) for i in range(2)]
    assert [r.status_code for r in datasets] == [201, 201]
    first = client.get("/api/datasets?limit=1").get_json()
    assert first["count"] == 1 and client.get(first["links"]["next"]).get_json()["count"] == 1
    assert client.get("/api/models").status_code == 200
    assert client.get(f"/api/datasets/{datasets[0].get_json()['id']}").status_code == 200

    request = {
        "trained-model": model["id"],
        "dataset": datasets[0].get_json()["id"],
        "preprocessing": {},
        "perturbation-values": [0, 0.1],
        "indexes": list(range(12)),
        "attack-params": {"steps": 20},
        "inspect-samples": 2,
    }
    job = client.post(BASE, json=request).get_json()["job_id"]
    early = [client.get(f"{BASE}/{job}/output").status_code, client.get(f"{BASE}/{job}/output/csv").status_code]
    seen = wait(client, f"{BASE}/{job}")
    assert seen >= {"started", "finished"} and early[1] == 409, (seen, early)
    for path in ("/output", "/output/csv", "/samples", "/samples/0", "/samples/0/clean.png", "/plot.svg"):
        assert client.get(f"{BASE}/{job}{path}").status_code == 200, path
    assert client.get(f"{BASE}?include=summary&limit=1").status_code == 200

    r = client.post("/api/adversarial_examples", json={**request, "index": 3})  # indexes and inspect-samples: unknown
    assert r.status_code == 400 and r.get_json()["details"]["field"] == "indexes"  # not a field of an example
    fields = {k: v for k, v in request.items() if k not in ("indexes", "inspect-samples")}
    r = client.post("/api/adversarial_examples", json={**fields, "index": 3})
    example_id = r.get_json()["job_id"]
    wait(client, f"/api/adversarial_examples/{example_id}")
    for path in ("", "/adversarial-1.png"):
        assert client.get(f"/api/adversarial_examples/{example_id}{path}").status_code == 200
    assert client.delete(f"/api/adversarial_examples/{example_id}").status_code == 200

    queued = nobody.post(BASE, json=request).get_json()["job_id"]
    assert nobody.get(f"{BASE}/{queued}").get_json()["job-status"] == "queued"
    assert nobody.get(f"{BASE}/{queued}/output").status_code == 303
    assert nobody.get(f"{BASE}/{queued}/samples").status_code == 409
    assert nobody.delete(f"{BASE}/{queued}").status_code == 200
    assert client.delete(f"{BASE}?status=canceled,failed").status_code == 200
    assert [client.get(p).status_code for p in ("/api/attacks", "/api/attacks/max-norm", "/api/attacks/gaussian")] == [
        200,
        200,
        404,
    ]

    # Errors: 400, 401, 404, 413, 422.
    assert client.post(BASE, json={**request, "seed": -1}).status_code == 400
    assert client.get(f"{BASE}?status=lost").status_code == 400
    assert keyed.get("/api/models").status_code == 401 and keyed.get("/api/openapi.json").status_code == 200
    assert client.get(f"{BASE}/{'0' * 8}-0000-0000-0000-{'0' * 12}").status_code == 404
    big = b'{"trained-model": "' + b"a" * 300_000 + b'"}'
    assert client.post(BASE, data=big, content_type="application/json").status_code == 413
    assert upload(client, "datasets", "d.h5", b"not hdf5 at all").status_code == 422

    doc = client.get("/api/openapi.json").get_json()
    covered = {check(doc, answer) for answer in list(answers)}
    wanted = {
        ("/api/health", "GET", 200),
        ("/api/models", "POST", 202),
        ("/api/models/{file_id}", "GET", 200),
        ("/api/datasets", "POST", 201),
        ("/api/datasets", "GET", 200),
        ("/api/datasets", "POST", 422),
        (BASE, "POST", 202),
        (BASE, "POST", 400),
        (BASE, "POST", 413),
        (BASE, "GET", 200),
        (BASE, "GET", 400),
        (BASE, "DELETE", 200),
        (BASE + "/{job_id}", "GET", 200),
        (BASE + "/{job_id}", "GET", 404),
        (BASE + "/{job_id}", "DELETE", 200),
        (BASE + "/{job_id}/output", "GET", 200),
        (BASE + "/{job_id}/output", "GET", 303),
        (BASE + "/{job_id}/output/csv", "GET", 409),
        (BASE + "/{job_id}/samples", "GET", 200),
        (BASE + "/{job_id}/samples", "GET", 409),
        (BASE + "/{job_id}/samples/{sample}", "GET", 200),
        (BASE + "/{job_id}/samples/{sample}/{name}.png", "GET", 200),
        ("/api/adversarial_examples", "POST", 202),
        ("/api/adversarial_examples", "POST", 400),
        ("/api/adversarial_examples/{job_id}", "GET", 200),
        ("/api/adversarial_examples/{job_id}/{name}.png", "GET", 200),
        ("/api/attacks", "GET", 200),
        ("/api/attacks/{perturbation_type}", "GET", 404),
        ("/api/models", "GET", 401),
    }
    assert wanted - covered == set()
    assert len(answers) >= 60


def test_swagger_ui_page_and_its_assets_are_served_without_a_key(settings):
    from app import create_app

    client = create_app({**settings, "api_keys": {KEY: "alice"}}).test_client()
    page = client.get("/api/docs")
    assert page.status_code == 200 and page.mimetype == "text/html"
    policy = page.headers["Content-Security-Policy"]
    script_src = re.search(r"script-src ([^;]*)", policy).group(1)
    assert script_src == "'self'" and "cdn" not in page.get_data(as_text=True).lower()
    html = page.get_data(as_text=True)
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert len(assets) == 3 and 'data-url="/api/openapi.json"' in html
    types = {client.get(a).mimetype for a in assets}
    assert types == {"text/css", "text/javascript"} or types == {"text/css", "application/javascript"}, types
    assert client.get("/api/openapi.json").status_code == 200
    # The vendored files are the ones README names, byte for byte.
    readme = (SWAGGER / "README.md").read_text()
    assert "swagger-ui-dist@5.35.0" in readme and (SWAGGER / "LICENSE").is_file()
    for name in ("swagger-ui-bundle.js", "swagger-ui.css"):
        assert hashlib.sha256((SWAGGER / name).read_bytes()).hexdigest() in readme, name


@pytest.fixture(scope="module")
def docs_server(redis_server, appdata):
    port = free_port()
    proc = start_api(redis_server.url, appdata, port, API_KEYS=f"alice:{KEY}", TEST_KEY=KEY)
    yield f"http://127.0.0.1:{port}"
    stop_process(proc)


def test_swagger_ui_renders_the_operations_in_a_browser_under_the_csp(docs_server, tmp_path: Path):
    require_browser()
    from selenium.webdriver.common.by import By

    driver = chrome(tmp_path / "profile", tmp_path)
    try:
        driver.get(f"{docs_server}/api/docs")  # no key: the page and the document are public
        blocks = wait_for(lambda: driver.find_elements(By.CSS_SELECTOR, ".opblock"), what="Swagger UI's operations")
        paths = {b.find_element(By.CSS_SELECTOR, ".opblock-summary-path").get_attribute("data-path") for b in blocks}
        assert "/api/security_evaluations" in paths and "/api/models" in paths and len(blocks) >= 24
        submit = next(
            b
            for b in blocks
            if "opblock-post" in b.get_attribute("class")
            and b.find_element(By.CSS_SELECTOR, ".opblock-summary-path").get_attribute("data-path") == BASE
        )
        submit.find_element(By.CSS_SELECTOR, ".opblock-summary").click()
        wait_for(lambda: "trained-model" in submit.text, what="the request body's example")
        assert "secev security evaluations" in driver.find_element(By.CSS_SELECTOR, ".info .title").text
        assert console_errors(driver) == []  # a CSP violation is logged as a console error
    finally:
        driver.quit()
