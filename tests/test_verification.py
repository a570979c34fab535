"""Verification after upload: every model is converted by a worker and compared with onnxruntime
(batch 1 and 4, input gradients) before anything attacks it. The record goes ``verifying`` ->
``ready`` with its figures, or ``unsupported`` naming the operator or the mismatch; a model named
by path is verified by its evaluation job. All models here are real ONNX files built by the test."""

from __future__ import annotations

import io
import os
import signal
import time
import uuid
from pathlib import Path

import numpy as np
import onnx
import pytest
import redis
from onnx import TensorProto, helper, numpy_helper

from conftest import start_worker, stop_process, submit, upload_model, verified, wait_status

RNG = np.random.default_rng(0)


def build(path: Path, nodes, initializers, opsets=(("", 13),), in_shape=("N", 1, 8, 8), out_shape=("N", 10)) -> Path:
    """A graph x -> ... -> y written with onnx.helper (IR 10: what onnxruntime and exporters use)."""
    graph = helper.make_graph(
        nodes,
        path.stem,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, list(in_shape))],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, list(out_shape))],
        [
            numpy_helper.from_array(np.asarray(v, np.float32) if k[0] == "W" else np.asarray(v), k)
            for k, v in initializers.items()
        ],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid(d, v) for d, v in opsets], ir_version=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def custom_op(path: Path) -> Path:
    """A vendor operator (domain com.example): passes every upload check, no converter knows it."""
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"]),
        helper.make_node("Frobnicate", ["f"], ["g"], domain="com.example"),
        helper.make_node("MatMul", ["g", "W"], ["y"]),
    ]
    return build(path, nodes, {"W": RNG.normal(size=(64, 10))}, (("", 13), ("com.example", 1)))


def scaler(path: Path) -> Path:
    """sklearn-onnx's ``Scaler`` (domain ai.onnx.ml): onnxruntime runs it, onnx2pytorch does not."""
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"]),
        helper.make_node("Scaler", ["f"], ["s"], domain="ai.onnx.ml", offset=[0.5], scale=[2.0]),
        helper.make_node("MatMul", ["s", "W"], ["y"]),
    ]
    return build(path, nodes, {"W": RNG.normal(size=(64, 10))}, (("", 13), ("ai.onnx.ml", 1)))


def resize_asymmetric(path: Path) -> Path:
    """Nearest-neighbour upsampling by 1.7 with ``asymmetric`` coordinates (TensorFlow's convention):
    onnx2pytorch converts it without complaint and samples other pixels than onnxruntime."""
    nodes = [
        helper.make_node("Resize", ["x", "", "scales"], ["r"], mode="nearest", coordinate_transformation_mode="asymmetric"),
        helper.make_node("Flatten", ["r"], ["f"]),
        helper.make_node("MatMul", ["f", "W"], ["y"]),
    ]
    scales = np.array([1, 1, 1.7, 1.7], np.float32)
    return build(path, nodes, {"scales": scales, "W": RNG.normal(size=(13 * 13, 10))})


def batch_one_only(path: Path) -> Path:
    """Exported at batch 1 with the whole input flattened (``Reshape`` to [64], no batch axis):
    no rewrite can make it dynamic, and at batch 4 it fails."""
    nodes = [
        helper.make_node("Reshape", ["x", "flat"], ["f"]),
        helper.make_node("MatMul", ["f", "W"], ["l"]),
        helper.make_node("Reshape", ["l", "rows"], ["y"]),
    ]
    shapes = {"flat": np.array([64], np.int64), "rows": np.array([1, 10], np.int64), "W": RNG.normal(size=(64, 10))}
    return build(path, nodes, shapes, in_shape=(1, 1, 8, 8), out_shape=(1, 10))


def slow_to_verify(path: Path) -> Path:
    """A plain CNN on 3 x 384 x 384 inputs: seconds of CPU to verify, long enough to kill its worker."""
    nodes, inits, prev = [], {}, "x"
    for i, (cin, cout) in enumerate([(3, 32), (32, 32), (32, 32), (32, 32)]):
        inits[f"Wc{i}"] = RNG.normal(size=(cout, cin, 3, 3)) / np.sqrt(9 * cin)
        nodes += [
            helper.make_node("Conv", [prev, f"Wc{i}"], [f"c{i}"], pads=[1, 1, 1, 1]),
            helper.make_node("Relu", [f"c{i}"], [f"r{i}"]),
        ]
        prev = f"r{i}"
    nodes += [helper.make_node("GlobalAveragePool", [prev], ["p"]), helper.make_node("Flatten", ["p"], ["f"])]
    nodes.append(helper.make_node("MatMul", ["f", "W"], ["y"]))
    inits["W"] = RNG.normal(size=(32, 10))
    return build(path, nodes, inits, in_shape=("N", 3, 384, 384))


def fields(path: Path) -> dict:
    return {"file": (io.BytesIO(path.read_bytes()), path.name)}


def idle_client(settings: dict):
    """A client whose jobs go to a queue no worker serves: uploads stay ``verifying``."""
    from app import create_app

    return create_app({**settings, "queue_name": f"idle-{uuid.uuid4().hex[:8]}"}).test_client()


def evaluation(model: str, **extra) -> dict:
    return {"trained-model": model, "dataset": "files/val.h5", "preprocessing": {}, "perturbation-values": [0, 0.05], **extra}


def test_upload_is_verified_by_a_worker_and_the_figures_reach_the_output(client, worker, assets, redis_server):
    r = client.post("/api/models", data=fields(assets.model), content_type="multipart/form-data")
    assert r.status_code == 202 and r.get_json()["status"] == "verifying", r.get_json()
    model = verified(client, r.get_json()["id"])  # polls: the session's worker runs the job
    figures = model["verification"]
    print(f"\nverification of the digits CNN: {figures}")
    # The converted CNN gives onnxruntime's logits (the softmax cut on both sides) at both batch sizes.
    assert set(figures["max-logit-diff"]) == {"batch-1", "batch-4"}
    assert all(0 <= d <= 1e-4 for d in figures["max-logit-diff"].values()), figures
    assert figures["gradient"] == "ok" and figures["converter"] == "onnx2pytorch" and figures["softmax-removed"] is True
    assert figures["batch-1-only"] is False and "note" not in figures and figures["seconds"] > 0
    assert figures["input-shape"] == [None, 1, 8, 8] and figures["input-dtype"] == "float32"
    job = wait_status(client, submit(client, evaluation(model["id"])))
    assert job["job-status"] == "finished", job
    output = client.get(f"/api/security_evaluations/{job['job_id']}/output").get_json()
    assert output["model-notes"]["verification"] == figures  # from the record, not verified again
    # A model named by path has no record: its job verifies it, on the dataset's sample shape.
    job = wait_status(client, submit(client, evaluation("files/cnn.onnx")))
    assert job["job-status"] == "finished", job
    named = client.get(f"/api/security_evaluations/{job['job_id']}/output").get_json()["model-notes"]["verification"]
    assert named["max-logit-diff"] == figures["max-logit-diff"] and named["gradient"] == "ok"
    # Verified once per version of the files, not once per job: a second job reuses the figures,
    # and a changed model file (its mtime) is verified again.
    conn = redis.Redis.from_url(redis_server.url)
    assert len(list(conn.scan_iter(match="*:verified:*"))) == 1
    job = wait_status(client, submit(client, evaluation("files/cnn.onnx")))
    again = client.get(f"/api/security_evaluations/{job['job_id']}/output").get_json()["model-notes"]["verification"]
    assert again == named and len(list(conn.scan_iter(match="*:verified:*"))) == 1
    os.utime(assets.model, ns=(time.time_ns(), time.time_ns()))
    assert wait_status(client, submit(client, evaluation("files/cnn.onnx")))["job-status"] == "finished"
    assert len(list(conn.scan_iter(match="*:verified:*"))) == 2


def test_submit_while_verifying_is_409_with_retry_after_then_202(settings, assets):
    client = idle_client(settings)
    r = client.post("/api/models", data=fields(assets.model), content_type="multipart/form-data")
    assert r.status_code == 202 and r.headers["Location"].endswith(f"/api/models/{r.get_json()['id']}")
    model_id = r.get_json()["id"]
    assert client.get(f"/api/models/{model_id}").get_json()["status"] == "verifying"
    r = client.post("/api/security_evaluations", json=evaluation(model_id))
    body = r.get_json()
    assert r.status_code == 409 and "still being verified" in body["error"] and int(r.headers["Retry-After"]) > 0, body
    assert body["details"] == {"field": "trained-model", "status": "verifying"}
    verified(client, model_id)  # no worker on this queue: the job function runs here, as a worker would
    assert client.post("/api/security_evaluations", json=evaluation(model_id)).status_code == 202


@pytest.mark.parametrize("make,operator", [(custom_op, "Frobnicate"), (scaler, "Scaler")], ids=["vendor-op", "ai.onnx.ml"])
def test_unsupported_operator_is_named_and_submit_is_422(client, tmp_path, make, operator):
    model = upload_model(client, make(tmp_path / f"{operator}.onnx"), expect="unsupported")
    assert model["reason"] == f"the operator {operator} is not supported by the converter (onnx2pytorch)", model
    r = client.post("/api/security_evaluations", json=evaluation(model["id"]))
    body = r.get_json()
    assert r.status_code == 422 and "is unsupported" in body["error"] and operator in body["error"], body
    assert body["details"] == {"field": "trained-model", "status": "unsupported"}


def test_logits_that_differ_from_onnxruntime_make_the_model_unsupported(client, tmp_path):
    model = upload_model(client, resize_asymmetric(tmp_path / "resize.onnx"), expect="unsupported")
    assert model["reason"].startswith("logits differ from onnxruntime by ") and model["reason"].endswith(" at batch 1"), model
    assert float(model["reason"].split(" by ")[1].split()[0]) > 1e-2
    assert client.post("/api/security_evaluations", json=evaluation(model["id"])).status_code == 422


def test_fixed_batch_one_model_is_ready_and_said_to_run_one_sample_at_a_time(client, tmp_path):
    model = upload_model(client, batch_one_only(tmp_path / "batch1.onnx"))
    figures = model["verification"]
    assert figures["batch-1-only"] is True and "one sample at a time (correct but slow)" in figures["note"], figures
    assert "dynamic-batch" in figures["rewrites"]  # tried, and not enough: hence one sample at a time
    assert figures["max-logit-diff"]["batch-4"] <= 1e-4 and figures["gradient"] == "ok", figures


def test_symbolic_input_shape_is_skipped_at_upload_and_checked_by_the_job(client, worker, assets, tmp_path):
    path = build(
        tmp_path / "any-size.onnx",
        [
            helper.make_node("GlobalAveragePool", ["x"], ["p"]),
            helper.make_node("Flatten", ["p"], ["f"]),
            helper.make_node("MatMul", ["f", "W"], ["y"]),
        ],
        {"W": RNG.normal(size=(1, 10))},
        in_shape=("N", 1, "H", "W"),
    )
    model = upload_model(client, path)
    assert model["verification"] == {"skipped": "input shape not fixed: ['N', 1, 'H', 'W']"}
    # Nothing to probe at upload; the evaluation verifies it on the dataset's 1 x 8 x 8 samples.
    job = wait_status(client, submit(client, evaluation(model["id"])))
    assert job["job-status"] == "finished", job
    figures = client.get(f"/api/security_evaluations/{job['job_id']}/output").get_json()["model-notes"]["verification"]
    assert figures["input-shape"] == [None, 1, 8, 8] and figures["max-logit-diff"]["batch-4"] <= 1e-4, figures


def test_named_unsupported_model_fails_its_job_with_the_reason(client, worker, assets):
    custom_op(assets.dir / "vendor-op.onnx")
    try:
        job = wait_status(client, submit(client, evaluation("files/vendor-op.onnx")))
    finally:
        (assets.dir / "vendor-op.onnx").unlink()
    assert job["job-status"] == "failed", job
    assert job["error"] == "the model is unsupported: the operator Frobnicate is not supported by the converter (onnx2pytorch)"
    assert job["details"]["status"] == "unsupported", job


def test_named_model_whose_input_is_not_the_datasets_fails_before_the_attack(client, worker, assets):
    # Flat input [N, 64]: the API only compares image-shaped (4-d) inputs, the job compares them all.
    build(
        assets.dir / "flat.onnx",
        [helper.make_node("MatMul", ["x", "W"], ["y"])],
        {"W": RNG.normal(size=(64, 10))},
        in_shape=("N", 64),
    )
    try:
        job = wait_status(client, submit(client, evaluation("files/flat.onnx")))
    finally:
        (assets.dir / "flat.onnx").unlink()
    assert job["job-status"] == "failed", job
    assert job["error"] == "the model's input is declared as ['N', 64] but the dataset's samples are [1, 8, 8]", job


def test_worker_killed_mid_verification_leaves_the_model_unsupported_with_the_lost_reason(
    settings, redis_server, appdata, tmp_path
):
    from rq.job import JobStatus
    from rq.registry import StartedJobRegistry

    from app import create_app
    from app import queue as jobqueue

    queue = f"verify-kill-{uuid.uuid4().hex[:8]}"
    client = create_app({**settings, "queue_name": queue}).test_client()
    r = client.post("/api/models", data=fields(slow_to_verify(tmp_path / "big.onnx")), content_type="multipart/form-data")
    assert r.status_code == 202, r.get_json()
    model_id = r.get_json()["id"]
    conn = redis.Redis.from_url(redis_server.url)
    proc = start_worker(redis_server.url, appdata, name=f"w-{queue}", QUEUE_NAME=queue)
    try:
        deadline = time.monotonic() + 60
        while (job := jobqueue.fetch_job(conn, f"validate-model-{model_id}")).get_status() != JobStatus.STARTED:
            assert time.monotonic() < deadline and job.get_status() == JobStatus.QUEUED, job.get_status()
            time.sleep(0.02)
        time.sleep(0.5)  # inside the verification: the work-horse has imported torch and is converting
        os.killpg(proc.pid, signal.SIGKILL)  # the worker and its work-horse, as the OOM killer would
        proc.wait()
    finally:
        stop_process(proc)
    view = client.get(f"/api/models/{model_id}").get_json()
    assert view["status"] == "verifying", view  # RQ still counts the job as running
    # RQ's heartbeat for a running job lasts about 90 s; its lapse is what a dead worker leaves
    # behind. Rather than wait, date it back (the only thing faked here).
    registry = StartedJobRegistry(queue, connection=conn)
    entries = conn.zrange(registry.key, 0, -1)
    assert entries, "the job was not running when its worker was killed"
    conn.zadd(registry.key, {e: time.time() - 1 for e in entries}, xx=True)
    view = client.get(f"/api/models/{model_id}").get_json()
    assert view["status"] == "unsupported" and "upload the file again" in view["reason"], view
    r = client.post("/api/security_evaluations", json=evaluation(model_id))
    assert r.status_code == 422 and "upload the file again" in r.get_json()["error"]


def test_deleted_verification_job_turns_the_record_unsupported(settings, redis_server, assets):
    from app import queue as jobqueue

    client = idle_client(settings)
    model_id = client.post("/api/models", data=fields(assets.model), content_type="multipart/form-data").get_json()["id"]
    # What a Redis without persistence leaves behind after a restart: the record, no job.
    jobqueue.fetch_job(redis.Redis.from_url(redis_server.url), f"validate-model-{model_id}").delete()
    view = client.get(f"/api/models/{model_id}").get_json()
    assert view["status"] == "unsupported" and "upload the file again" in view["reason"], view
