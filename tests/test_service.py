"""A job from POST to curve through a real RQ worker, checked against direct computations."""

from __future__ import annotations

import time

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from rq import Worker

from conftest import wait_status

EPS = [0.0, 0.02, 0.05, 0.1, 0.2]


def submit(client, **fields):
    body = {"trained-model": "files/cnn.onnx", "dataset": "files/val.h5", "preprocessing": {}, "perturbation-values": EPS}
    body.update(fields)
    r = client.post("/api/security_evaluations", json=body)
    assert r.status_code == 202, r.get_json()
    return r.get_json()["job_id"]


def onnxruntime_accuracy(model_path, x, y) -> float:
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    scores = session.run(None, {session.get_inputs()[0].name: x.astype(np.float32)})[0]
    return float((scores.argmax(1) == y).mean())


def test_job_from_post_to_curve_matches_direct_computation(client, worker, assets):
    job_id = submit(client)
    status = wait_status(client, job_id)
    assert status["job-status"] == "finished", status
    assert status["progress"]["done"] == status["progress"]["total"] == 120 * len(EPS)
    assert status["started_at"] >= status["created_at"] and status["ended_at"] >= status["started_at"]
    out = client.get(f"/api/security_evaluations/{job_id}/output").get_json()
    xs, ys = out["sec-curve"]["x-values"], out["sec-curve"]["y-values"]
    assert xs == EPS
    # Epsilon 0 is the clean accuracy, computed independently with onnxruntime on the same file.
    assert out["clean-accuracy"] == ys[0] == pytest.approx(onnxruntime_accuracy(assets.model, assets.x, assets.y))
    assert all(b <= a for a, b in zip(ys, ys[1:])) and ys[-1] < ys[0]
    assert out["n-samples"] == 120 and out["model-notes"]["softmax-removed"] is True
    assert out["model"]["id"] == "files/cnn.onnx" and len(out["model"]["sha256"]) == 64
    assert out["attack"]["params"]["steps"] == 50 and out["timing"]["total-seconds"] > 0
    assert 0 <= out["sec-value"] <= 1 and out["sec-level"] in ("low", "medium", "high")

    # The same request run in-process by the engine gives the same curve (same seed, same engine).
    from app import schemas
    from app.engine.evaluation import evaluate

    req = schemas.evaluation_request({"trained-model": "m", "dataset": "d", "preprocessing": {}, "perturbation-values": EPS})
    direct = evaluate(req, assets.model, assets.dataset)
    assert direct["sec-curve"]["y-values"] == ys


def test_random_noise_baseline_is_weaker_than_the_attack(client, worker, assets):
    attacked = submit(client)
    noise = submit(client, **{"perturbation-type": "random"})
    a = wait_status(client, attacked)
    n = wait_status(client, noise)
    assert a["job-status"] == n["job-status"] == "finished"
    # Noise breaks few samples, so its passes at small epsilons have no candidates: still complete.
    assert n["progress"]["done"] == n["progress"]["total"] == 120 * len(EPS), n["progress"]
    ya = client.get(f"/api/security_evaluations/{attacked}/output").get_json()["sec-curve"]["y-values"]
    out = client.get(f"/api/security_evaluations/{noise}/output").get_json()
    assert out["attack"]["name"] == "noise" and out["perturbation-type"] == "random"
    yn = out["sec-curve"]["y-values"]
    assert yn[0] == ya[0] and all(n_ >= a_ for a_, n_ in zip(ya, yn)) and yn[-1] > ya[-1]


def test_fast_mode_and_indexes_choose_the_samples(client, worker, assets):
    fast = submit(client, **{"evaluation-mode": "fast", "perturbation-values": [0.05]})
    picked = submit(client, indexes=[3, 1, 2], **{"perturbation-values": [0.05]})
    wait_status(client, fast)
    wait_status(client, picked)
    assert client.get(f"/api/security_evaluations/{fast}/output").get_json()["n-samples"] == 100
    assert client.get(f"/api/security_evaluations/{picked}/output").get_json()["n-samples"] == 3


def custom_op_model(path):
    """Valid ONNX (the checker accepts it) with an operator no converter knows."""
    from onnx import TensorProto, helper

    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])
    out = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 10])
    nodes = [
        helper.make_node("Flatten", ["input"], ["f"]),
        helper.make_node("Frobnicate", ["f"], ["output"], domain="com.example"),
    ]
    graph = helper.make_graph(nodes, "g", [inp], [out])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    onnx.save(model, str(path))
    return path


def test_runtime_failure_is_recorded_with_a_readable_message(client, worker, appdata, assets):
    custom_op_model(appdata / "files" / "custom.onnx")
    job_id = submit(client, **{"trained-model": "files/custom.onnx"})
    status = wait_status(client, job_id)
    assert status["job-status"] == "failed"
    # Verified before the attack (a model named by path has no record): the operator is named.
    assert status["error"] == "the model is unsupported: the operator Frobnicate is not supported by the converter (onnx2pytorch)"
    r = client.get(f"/api/security_evaluations/{job_id}/output")
    assert r.status_code == 303
    # The worker is not broken: the next job finishes.
    assert wait_status(client, submit(client, **{"perturbation-values": [0.05]}))["job-status"] == "finished"


def test_delete_running_job_stops_it_within_5_seconds_and_frees_the_worker(client, worker, redis_server, appdata):
    import redis

    job_id = submit(client, attack="auto", **{"attack-params": {"fmn-steps": 5000, "apgd-steps": 5000}})
    wait_status(client, job_id, statuses=("started",))
    time.sleep(0.5)
    t0 = time.monotonic()
    r = client.delete(f"/api/security_evaluations/{job_id}")
    assert r.status_code == 200 and r.get_json()["was"] == "started"
    conn = redis.Redis.from_url(redis_server.url)
    while time.monotonic() - t0 < 10:
        w = [w for w in Worker.all(connection=conn) if w.name == "test-worker"][0]
        if w.get_state() == "idle":
            break
        time.sleep(0.05)
    elapsed = time.monotonic() - t0
    assert elapsed < 5, f"worker still busy after {elapsed:.1f} s"
    assert client.get(f"/api/security_evaluations/{job_id}").status_code == 404
    assert not (appdata / "evaluations" / job_id).exists()
    assert wait_status(client, submit(client, **{"perturbation-values": [0.05]}))["job-status"] == "finished"
