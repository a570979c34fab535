"""Results (issue 9), the parts that need no finished job: the attacks' catalogue against the validator,
the OpenAPI schemas of the new answers, bounded reading of inspection files, and the plotting process."""

from __future__ import annotations

import json

import pytest
from test_results import BASE, EPS, SMALL, png, write_inspection

from conftest import queue_client


def test_attacks_catalogue_is_what_the_validator_accepts(client, settings, assets):
    from app import schemas

    body = client.get("/api/attacks").get_json()
    listed = {a["name"]: a for a in body["attacks"]}
    assert set(listed) == {*schemas.ATTACKS, "noise"} and all(a["paper"] for n, a in listed.items() if n != "noise")
    assert {a["name"] for a in client.get("/api/attacks/max-norm").get_json()["attacks"]} == set(schemas.ATTACKS)
    assert [a["name"] for a in client.get("/api/attacks/random").get_json()["attacks"]] == ["noise"]
    r = client.get("/api/attacks/gaussian")
    assert r.status_code == 404 and "known: ['max-norm', 'random']" in r.get_json()["error"]

    def request(name: str, params: dict) -> dict:
        base = {"trained-model": "m.onnx", "dataset": "d.h5"}
        base.update({"perturbation-type": "random"} if name == "noise" else {"attack": name})
        return schemas.evaluation_request({**base, "attack-params": params})

    for name, attack in listed.items():
        assert set(attack["norms"]) == set(schemas.NORMS) and attack["description"]
        # The listed defaults are the ones a request gets.
        assert request(name, {})["attack-params"] == attack["defaults"] == {p["name"]: p["default"] for p in attack["parameters"]}
        for p in attack["parameters"]:
            key = p["name"]
            assert request(name, {key: p["default"]})["attack-params"][key] == p["default"]  # a default out of range fails here
            if p["type"] in ("integer", "number"):
                low = p["minimum"] + (1 if p["type"] == "integer" else 1e-6)
                for ok in (low, p["maximum"]):
                    assert request(name, {key: ok})["attack-params"][key] == ok
                for bad in (p["minimum"] - (1 if p["type"] == "integer" else 0), p["maximum"] * 1.5 + 1):
                    with pytest.raises(Exception, match=f"attack-params.{key}"):
                        request(name, {key: bad})
            elif p["type"] == "string":
                for choice in p["choices"]:
                    assert request(name, {key: choice})["attack-params"][key] == choice
                with pytest.raises(Exception, match="must be one of"):
                    request(name, {key: "bogus"})
            else:
                with pytest.raises(Exception, match="expected true or false"):
                    request(name, {key: 1})
    # Over HTTP: the catalogue's limits are the API's (a queue no worker serves: nothing runs).
    nobody = queue_client(settings, "results-nobody")
    steps = next(p for p in listed["pgd"]["parameters"] if p["name"] == "steps")
    ok = {"trained-model": "files/cnn.onnx", "dataset": "files/val.h5", **SMALL, "attack": "pgd"}
    assert nobody.post(BASE, json={**ok, "attack-params": {"steps": steps["maximum"]}}).status_code == 202
    r = nobody.post(BASE, json={**ok, "attack-params": {"steps": steps["maximum"] + 1}})
    assert r.status_code == 400 and r.get_json()["details"]["field"] == "attack-params.steps"
    assert f"between 1 and {steps['maximum']}" in r.get_json()["error"]


def nullable_to_json_schema(node):
    """OpenAPI 3.0's ``nullable: true`` as JSON Schema (null allowed), recursively."""
    if isinstance(node, dict):
        out = {k: nullable_to_json_schema(v) for k, v in node.items() if k != "nullable"}
        return {"anyOf": [out, {"type": "null"}]} if node.get("nullable") else out
    return [nullable_to_json_schema(v) for v in node] if isinstance(node, list) else node


def test_openapi_describes_the_results_endpoints_and_their_answers_conform(client):
    import jsonschema_rs

    doc = client.get("/api/openapi.json").get_json()
    for path in ("/output/csv", "/plot.png", "/plot.svg", "/report"):
        assert "get" in doc["paths"][f"/api/security_evaluations/{{job_id}}{path}"]
    assert "delete" in doc["paths"]["/api/security_evaluations"] and "get" in doc["paths"]["/api/plots"]
    components = nullable_to_json_schema(doc["components"])

    def conforms(name: str, instance: dict) -> None:
        jsonschema_rs.Draft4Validator({"$ref": f"#/components/schemas/{name}", "components": components}).validate(instance)

    conforms("AttackList", client.get("/api/attacks").get_json())
    conforms("AttackList", client.get("/api/attacks/max-norm").get_json())
    conforms("BulkDelete", client.delete(f"{BASE}?status=failed").get_json())
    with pytest.raises(ValueError):  # the schemas are real: a wrong answer does not conform
        conforms("BulkDelete", {"deleted": "2", "ids": [], "evaluations": [], "more": False})


def test_inspection_files_are_read_within_bounds(tmp_path):
    """The report reads only plain PNG files inside the job's own directory, each and all bounded."""
    from app import report

    job, outside = tmp_path / "job", tmp_path / "outside.png"
    write_inspection(job, len(EPS))
    good = (job / "inspection" / "0" / "clean.png").read_bytes()
    outside.write_bytes(good)
    (job / "inspection" / "1" / "clean.png").unlink()
    (job / "inspection" / "1" / "clean.png").symlink_to(outside)  # a link out of the job's directory
    (job / "inspection" / "1" / "adversarial-2.png").write_bytes(b"<svg onload=alert(1)>")  # not a PNG
    (job / "inspection" / "1" / "difference-2.png").write_bytes(good + b"\0" * (report.MAX_IMAGE_BYTES + 1))  # too big
    shown = report.read_inspection(job)
    assert [s["sample"] for s in shown] == [0, 1]
    assert all(shown[0]["images"].values())
    images = shown[1]["images"]
    assert images["clean"] is images["adversarial"] is images["difference"] is None and images["attribution-clean"]

    index = json.loads((job / "inspection" / "index.json").read_text())
    (job / "inspection" / "index.json").write_text(json.dumps({"samples": index["samples"] * 20}))
    assert len(report.read_inspection(job)) == report.MAX_SAMPLES_SHOWN
    (job / "inspection" / "index.json").write_bytes(b"{" + b" " * report.MAX_INDEX_BYTES + b"}")
    assert report.read_inspection(job) is None
    (job / "inspection" / "index.json").write_text('{"samples": [{"sample": "../../x"}, 7, {"sample": true}]}')
    assert report.read_inspection(job) == []


def test_a_plotting_process_that_dies_is_replaced_and_a_failed_plot_is_a_503():
    import os
    import signal

    from app import plots, results
    from app.exceptions import BackendUnavailableError

    curve = {"x-values": EPS, "y-values": [0.9, 0.7, 0.4, 0.1]}
    out = {"sec-curve": curve, "n-samples": 40, "attack": {"name": "pgd", "norm": "l2"}}
    spec = {"title": "t", "xlabel": results.x_label({"l2"}), "series": [results.series(out, "PGD")]}
    png(plots.render(spec, "png"))
    os.kill(plots._renderer.proc.pid, signal.SIGKILL)
    png(plots.render(spec, "png"))  # a fresh child draws it
    with pytest.raises(BackendUnavailableError, match="plotting process failed"):
        plots.render({"title": "t"}, "png")
    png(plots.render(spec, "png"))
