"""The Postman collection in postman/, run by newman (installed by `make newman` from the npm registry)
against real gunicorn with a real worker, as CI runs it. It skips only where node or npm are absent."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from conftest import ROOT

NEWMAN = ROOT / ".node" / "node_modules" / ".bin" / "newman"
COLLECTION = ROOT / "postman" / "secev.postman_collection.json"
ENVIRONMENT = ROOT / "postman" / "secev.postman_environment.json"
# What the collection must cover, in the order it runs them: (name, method, path after /api/).
COVERED = [
    ("Health", "GET", "health"),
    ("Upload model", "POST", "models"),
    ("Upload dataset", "POST", "datasets"),
    ("Wait until the model is verified", "GET", "models/{{modelId}}"),
    ("Wait until the dataset is validated", "GET", "datasets/{{datasetId}}"),
    ("Submit evaluation", "POST", "security_evaluations"),
    ("Poll until finished", "GET", "security_evaluations/{{jobId}}"),
    ("Output", "GET", "security_evaluations/{{jobId}}/output"),
    ("Output as CSV", "GET", "security_evaluations/{{jobId}}/output/csv"),
    ("Plot (PNG)", "GET", "security_evaluations/{{jobId}}/plot.png"),
    ("Delete evaluation", "DELETE", "security_evaluations/{{jobId}}"),
]


def newman() -> str:
    if NEWMAN.exists():
        return str(NEWMAN)
    if not (shutil.which("node") and shutil.which("npm")):
        pytest.skip("node and npm are absent: newman cannot be installed, so the Postman collection is not run")
    pytest.fail("newman is not installed: run `make newman` (npm install --prefix .node newman@6.2.2)")


def test_collection_covers_the_whole_path_and_every_request_asserts():
    collection = json.loads(COLLECTION.read_text())
    assert collection["info"]["schema"].endswith("/v2.1.0/collection.json")
    items = collection["item"]
    assert [(i["name"], i["request"]["method"], "/".join(i["request"]["url"]["path"][1:])) for i in items] == COVERED
    for item in items:
        tests = "\n".join(line for e in item["event"] if e["listen"] == "test" for line in e["script"]["exec"])
        assert "pm.test(" in tests and ("to.have.status(" in tests or "pm.response.code" in tests), item["name"]
    polls = [i["name"] for i in items if "postman.setNextRequest(pm.info.requestName)" in json.dumps(i)]
    assert polls == [COVERED[3][0], COVERED[4][0], COVERED[6][0]]  # bounded by maxPolls
    env = {v["key"] for v in json.loads(ENVIRONMENT.read_text())["values"]}
    assert {"baseUrl", "apiKey", "epsilons", "extraFields", "maxPolls", "pollDelayMs"} <= env


def test_newman_runs_the_collection_green_against_a_live_server(live_api, assets, tmp_path):
    program = newman()
    work = tmp_path / "work"  # newman's --working-dir: the form-data files the collection names
    work.mkdir()
    shutil.copy(assets.model, work / "model.onnx")
    shutil.copy(assets.dataset, work / "dataset.h5")
    report = tmp_path / "newman.json"
    extra = {"preprocessing": {}, "attack": "fgsm", "indexes": list(range(20))}  # a cheap job on the digits CNN
    run = subprocess.run(
        [program, "run", str(COLLECTION), "-e", str(ENVIRONMENT), "--env-var", f"baseUrl={live_api}",
         "--env-var", f"extraFields={json.dumps(extra)}", "--env-var", "pollDelayMs=300", "--working-dir", str(work),
         "--reporters", "cli,json", "--reporter-json-export", str(report), "--color", "off"],
        cwd=tmp_path, capture_output=True, text=True, timeout=400,
    )  # fmt: skip
    assert report.exists(), run.stdout + run.stderr
    result = json.loads(report.read_text())["run"]
    failures = [(f["source"].get("name"), f["error"].get("message")) for f in result["failures"]]
    assert run.returncode == 0 and failures == [], (failures, run.stdout[-3000:])
    stats = result["stats"]
    assert stats["assertions"]["failed"] == 0 and stats["assertions"]["total"] >= 25
    ran = [e["item"]["name"] for e in result["executions"]]
    assert [name for name, *_ in COVERED] == list(dict.fromkeys(ran))  # every request ran, in order
    assert ran.count("Poll until finished") >= 1
    codes = {e["item"]["name"]: e["response"]["code"] for e in result["executions"]}
    assert codes["Upload model"] == 202 and codes["Submit evaluation"] == 202 and codes["Plot (PNG)"] == 200
