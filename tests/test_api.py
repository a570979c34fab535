"""The HTTP layer without workers: uploads, validation, listing, status codes, JSON errors."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys

import h5py
import numpy as np
import pytest

from conftest import ROOT, upload_model


def upload(client, kind, path, name=None):
    data = {"file": (io.BytesIO(path.read_bytes()), name or path.name)}
    return client.post(f"/api/{kind}", data=data, content_type="multipart/form-data")


def body_for(assets, **fields):
    return {"trained-model": "files/cnn.onnx", "dataset": "files/val.h5", "preprocessing": {}, **fields}


def test_http_layer_never_imports_torch():
    code = (
        "import sys, app; app.create_app({'appdata': '/tmp/secev-notorch'}); "
        "print('torch' in sys.modules, any(m.startswith('app.engine') for m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False False"


def test_upload_model_and_dataset_are_content_addressed_and_listed(client, assets, appdata):
    r = upload(client, "models", assets.model)
    assert r.status_code == 202 and r.get_json()["status"] == "verifying", r.get_json()
    model = r.get_json()
    assert model["sha256"] == hashlib.sha256(assets.model.read_bytes()).hexdigest()
    assert model["input-shape"][1:] == [1, 8, 8] and model["ends-with-softmax"] is True
    assert r.headers["Location"].startswith("http://")
    assert (appdata / "blobs" / model["sha256"][:2] / f"{model['sha256']}.onnx").is_file()
    r = upload(client, "datasets", assets.dataset)
    assert r.status_code == 201
    ds = r.get_json()
    assert ds["n-samples"] == 120 and ds["shape"] == [1, 8, 8] and ds["n-classes"] == 10
    assert ds["value-range"][0] >= 0 and ds["value-range"][1] <= 1
    assert [m["id"] for m in client.get("/api/models").get_json()["models"]] == [model["id"]]
    assert [d["id"] for d in client.get("/api/datasets").get_json()["datasets"]] == [ds["id"]]
    assert client.get(f"/api/models/{model['id']}").get_json()["sha256"] == model["sha256"]
    assert client.get("/api/models/" + "0" * 32).status_code == 404


def test_one_hot_labels_are_accepted(client, tmp_path, assets):
    from app.engine.assets import write_h5

    path = write_h5(tmp_path / "onehot.h5", assets.x[:20], assets.y[:20], one_hot=True, n_classes=10)
    r = upload(client, "datasets", path)
    assert r.status_code == 201 and r.get_json()["label-format"] == "one-hot" and r.get_json()["n-classes"] == 10


@pytest.mark.parametrize(
    "kind,name,content,expect",
    [
        ("models", "m.txt", b"x", "must end in .onnx"),
        ("models", "m.onnx", b"", "empty"),
        ("models", "m.onnx", b"\x08\x07garbage-not-protobuf" * 10, "ONNX"),
        ("datasets", "d.csv", b"1,2", "must end in .h5"),
        ("datasets", "d.h5", b"not hdf5 at all", "not a readable HDF5"),
    ],
)
def test_bad_uploads_get_a_json_4xx_naming_the_problem(client, kind, name, content, expect):
    r = client.post(f"/api/{kind}", data={"file": (io.BytesIO(content), name)}, content_type="multipart/form-data")
    assert 400 <= r.status_code < 500
    assert expect in r.get_json()["error"]
    assert client.get(f"/api/{kind}").get_json()[kind] == []


def test_upload_without_file_field(client):
    r = client.post("/api/models", data={}, content_type="multipart/form-data")
    assert r.status_code == 400 and r.get_json()["details"]["field"] == "file"


def test_upload_with_other_parts_is_refused_naming_them(client, assets):
    """Parts the service would drop (a second file, a stray field) are a 400, and nothing is stored."""
    def send(kind, **parts):
        return client.post(f"/api/{kind}", data=parts, content_type="multipart/form-data")

    def part(path):
        return (io.BytesIO(path.read_bytes()), path.name)

    two = send("models", file=[part(assets.model), part(assets.model)])
    assert two.status_code == 400 and two.get_json()["error"] == "one model per upload: 2 parts are named 'file'"
    stray = send("datasets", file=part(assets.dataset), name="my data")
    assert stray.status_code == 400 and stray.get_json()["details"] == {"field": "name", "allowed": ["file"]}
    assert "a dataset upload takes only 'file'" in stray.get_json()["error"]
    data_on_dataset = send("datasets", file=part(assets.dataset), **{"external-data": part(assets.model)})
    assert data_on_dataset.status_code == 400 and "only for models" in data_on_dataset.get_json()["error"]
    nameless = client.post(  # found by the fuzzer: a part with no name was a 500
        "/api/models", data=b"--XX\r\nContent-Disposition: form-data\r\n\r\nvalue\r\n--XX--\r\n",
        content_type="multipart/form-data; boundary=XX",
    )
    assert nameless.status_code == 400 and nameless.get_json()["details"]["field"] == "(a part without a name)"
    assert client.get("/api/models").get_json()["models"] == [] and client.get("/api/datasets").get_json()["datasets"] == []


@pytest.mark.parametrize(
    "mutate,expect",
    [
        (lambda f: f.create_dataset("samples", data=np.zeros((4, 8, 8), np.float32)), "N x C x H x W"),
        (lambda f: f.create_dataset("samples", data=np.full((4, 1, 8, 8), np.nan, np.float32)), "NaN"),
        (lambda f: f.create_dataset("samples", data=np.zeros((5, 1, 8, 8), np.float32)), "5 samples but 4 labels"),
        (lambda f: f.create_dataset("samples", data=np.zeros((4, 1, 8, 8), np.int32)), "must hold floats"),
    ],
)
def test_bad_datasets_are_refused(client, tmp_path, mutate, expect):
    path = tmp_path / "bad.h5"
    with h5py.File(path, "w") as f:
        mutate(f)
        f.create_dataset("labels", data=np.zeros(4, np.int64))
    r = upload(client, "datasets", path)
    assert r.status_code == 422 and expect in r.get_json()["error"]


def test_upload_size_limit(settings, tmp_path, assets):
    from app import create_app

    small = create_app({**settings, "max_upload_mb": 0}).test_client()
    r = upload(small, "models", assets.model)
    assert r.status_code == 413 and "limit" in r.get_json()["error"]


def test_submit_answers_202_with_absolute_location(client, assets):
    r = client.post("/api/security_evaluations", json=body_for(assets, **{"perturbation-values": [0.05, 0.01, 0.05]}))
    assert r.status_code == 202, r.get_json()
    job_id = r.get_json()["job_id"]
    assert r.headers["Location"] == f"http://localhost/api/security_evaluations/{job_id}"
    st = client.get(f"/api/security_evaluations/{job_id}").get_json()
    assert st["job-status"] == "queued"
    assert st["request"]["perturbation-values"] == [0.0, 0.01, 0.05]
    assert st["request"]["attack-params"] == {"steps": 50, "step-size": 0.1, "random-start": True, "restarts": 1}
    assert st["progress"] == {"done": 0, "total": 0} and st["created_at"] > 0
    r = client.get(f"/api/security_evaluations/{job_id}/output")
    assert r.status_code == 303 and r.headers["Location"].endswith(f"/api/security_evaluations/{job_id}")
    assert r.mimetype == "application/json" and r.get_json()["job-status"] == "queued"  # JSON, not a redirect page
    assert r.get_json()["status"] == r.headers["Location"] and "not finished" in r.get_json()["message"]
    listed = client.get("/api/security_evaluations?status=queued").get_json()
    assert [e["job_id"] for e in listed["evaluations"]] == [job_id]
    assert client.get("/api/security_evaluations?status=finished").get_json()["count"] == 0
    assert client.get("/api/security_evaluations?status=bogus").status_code == 400
    r = client.delete(f"/api/security_evaluations/{job_id}")
    assert r.status_code == 200 and r.get_json()["deleted"] is True
    assert client.get(f"/api/security_evaluations/{job_id}").status_code == 404


def test_submit_by_uploaded_ids(client, assets):
    model = upload_model(client, assets.model)
    ds = upload(client, "datasets", assets.dataset).get_json()
    r = client.post("/api/security_evaluations", json={"trained-model": model["id"], "dataset": ds["id"], "preprocessing": {}})
    assert r.status_code == 202


@pytest.mark.parametrize(
    "fields,field,text",
    [
        ({"trained-model": "0123456789abcdef0123456789abcdef"}, "trained-model", "no uploaded model"),
        ({"dataset": "missing.h5"}, "dataset", "no uploaded dataset"),
        ({"trained-model": "/etc/passwd"}, "trained-model", "absolute"),
        ({"dataset": "../outside.h5"}, "dataset", "'..'"),
        ({"perturbation-values": [0.1, 1.5]}, "perturbation-values", "[0, 1]"),
        ({"perturbation-values": []}, "perturbation-values", "non-empty"),
        ({"perturbation-values": [i / 100 for i in range(60)]}, "perturbation-values", "at most 50"),
        ({"perturbation-values": ["a"]}, "perturbation-values", "finite number"),
        ({"attack": "deepfool"}, "attack", "must be one of"),
        ({"norm": "l1"}, "norm", "must be one of"),
        ({"attack-params": {"steps": 0}}, "attack-params.steps", "between"),
        ({"attack-params": {"gamma": 0.1}}, "attack-params", "not accepted by 'pgd'"),
        ({"evaluation-mode": "slow"}, "evaluation-mode", "must be one of"),
        ({"preprocessing": {"mean": [0.5, 0.5, 0.5], "std": [1, 1, 1]}}, "preprocessing", "1 channels"),
        ({"preprocessing": {"mean": [0.5], "std": [0]}}, "preprocessing.std", "positive"),
        ({"input-bounds": [1, 0]}, "input-bounds", "below"),
        ({"input-bounds": [0.2, 0.8]}, "input-bounds", "outside input-bounds"),
        ({"indexes": [0, 5000]}, "indexes", "out of range"),
        ({"batch-size": 0}, "batch-size", "between"),
        ({"perturbation-type": "random", "attack": "pgd"}, "attack", "takes no attack"),
        ({"task": "detection"}, "task", "must be one of"),
        ({"performance-metric": "f1"}, "performance-metric", "must be one of"),
        ({"trained-model": 123}, "trained-model", "must be a string (an uploaded id or a file name"),
        ({"dataset": ""}, "dataset", "required"),
    ],
)
def test_submit_validation_errors_name_the_field(client, assets, fields, field, text):
    r = client.post("/api/security_evaluations", json=body_for(assets, **fields))
    assert r.status_code == 400, r.get_json()
    body = r.get_json()
    assert body["details"]["field"] == field and text in body["error"], body
    assert client.get("/api/security_evaluations").get_json()["count"] == 0


def test_imagenet_preprocessing_is_the_default_and_checked_against_channels(client, assets):
    body = body_for(assets)
    del body["preprocessing"]
    r = client.post("/api/security_evaluations", json=body)
    assert r.status_code == 400 and "3 mean/std values but the dataset has 1 channels" in r.get_json()["error"]


def test_unknown_fields_and_non_json_bodies(client, assets):
    r = client.post("/api/security_evaluations", json=body_for(assets, perturbation_values=[0.1]))
    assert r.status_code == 400 and "unknown fields" in r.get_json()["error"]
    r = client.post("/api/security_evaluations", data="not json", content_type="text/plain")
    assert r.status_code == 400 and r.get_json()["error"]
    r = client.post("/api/security_evaluations", json=[1, 2])
    assert r.status_code == 400


def test_symlink_leading_outside_is_refused(client, assets, appdata, tmp_path):
    outside = tmp_path / "secret.onnx"
    outside.write_bytes(assets.model.read_bytes())
    link = appdata / "files" / "link.onnx"
    link.unlink(missing_ok=True)
    os.symlink(outside, link)
    r = client.post("/api/security_evaluations", json=body_for(assets, **{"trained-model": "files/link.onnx"}))
    assert r.status_code == 400 and "outside the data directory" in r.get_json()["error"]


def test_model_and_dataset_shapes_must_agree(client, assets, tmp_path, appdata):
    from app.engine.assets import write_h5

    write_h5(appdata / "files" / "rgb.h5", np.zeros((4, 3, 8, 8), np.float32), np.zeros(4, np.int64), n_classes=10)
    r = client.post("/api/security_evaluations", json=body_for(assets, dataset="files/rgb.h5"))
    assert r.status_code == 400 and "the model expects" in r.get_json()["error"]


def test_unknown_ids_and_routes_are_json_404(client):
    for path in (
        "/api/security_evaluations/nope",
        "/api/security_evaluations/0b6f3a51-7c1f-4f55-9a58-5f1f0c8f5f00/output",
        "/api/x",
    ):
        r = client.get(path)
        assert r.status_code == 404 and "error" in r.get_json()
    r = client.delete("/api/security_evaluations/0b6f3a51-7c1f-4f55-9a58-5f1f0c8f5f00")
    assert r.status_code == 404
    r = client.put("/api/security_evaluations")
    assert r.status_code == 405 and r.get_json()["error"]


def test_health_reports_redis_workers_and_version(client):
    body = client.get("/api/health").get_json()
    assert body["redis"] is True and body["status"] == "ok" and body["version"]
    assert isinstance(body["workers"], int)


def test_health_and_api_answer_503_json_when_redis_is_down(appdata):
    from app import create_app
    from app.redis_server import free_port

    down = create_app({"redis_url": f"redis://127.0.0.1:{free_port()}/0", "appdata": str(appdata)}).test_client()
    r = down.get("/api/health")
    assert r.status_code == 503 and r.get_json()["redis"] is False
    r = down.get("/api/security_evaluations")
    assert r.status_code == 503 and "Redis" in r.get_json()["error"]
