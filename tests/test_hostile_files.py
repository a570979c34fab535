"""Hostile HDF5 and ONNX files (issue 7, classes 1, 3, 5 and 9): refused at upload, when named
in a request, and by the worker's reader; big datasets validated in the background; the API's
memory and answer time bounded, measured against real gunicorn."""

from __future__ import annotations

import io
import json
import re
import shutil
import time
import uuid
from pathlib import Path

import hostile
import numpy as np
import pytest
import redis

from app.exceptions import InvalidFileError
from conftest import start_api, start_worker, stop_process


def upload(client, kind, path, name=None):
    data = {"file": (io.BytesIO(path.read_bytes()), name or path.name)}
    return client.post(f"/api/{kind}", data=data, content_type="multipart/form-data")


def build(case, folder: Path, suffix: str) -> Path:
    name, builder, _ = case
    folder.mkdir(parents=True, exist_ok=True)
    return builder(folder / (name.replace(" ", "-") + suffix))


@pytest.mark.parametrize("case", hostile.HDF5_CASES, ids=[c[0] for c in hostile.HDF5_CASES])
def test_hostile_hdf5_upload_is_refused_naming_the_feature(client, tmp_path, appdata, case):
    r = upload(client, "datasets", build(case, tmp_path, ".h5"))
    assert r.status_code == 422, r.get_json()
    assert case[2] in r.get_json()["error"]
    assert client.get("/api/datasets").get_json()["datasets"] == []
    assert list((appdata / "uploads").iterdir()) == []


@pytest.mark.parametrize("case", hostile.ONNX_CASES, ids=[c[0] for c in hostile.ONNX_CASES])
def test_hostile_onnx_upload_is_refused(client, tmp_path, case):
    r = upload(client, "models", build(case, tmp_path, ".onnx"))
    assert r.status_code == 422 and case[2] in r.get_json()["error"], r.get_json()
    assert client.get("/api/models").get_json()["models"] == []


@pytest.mark.parametrize("case", hostile.HDF5_CASES, ids=[c[0] for c in hostile.HDF5_CASES])
def test_hostile_hdf5_named_in_a_request_is_refused(client, assets, appdata, case):
    path = build(case, appdata / "files" / "hostile", ".h5")
    body = {"trained-model": "files/cnn.onnx", "dataset": str(path.relative_to(appdata)), "preprocessing": {}}
    r = client.post("/api/security_evaluations", json=body)
    assert r.status_code == 400, r.get_json()
    assert r.get_json()["error"].startswith("dataset: ") and case[2] in r.get_json()["error"]
    assert r.get_json()["details"]["field"] == "dataset"


def test_onnx_external_data_anywhere_must_stay_in_the_models_folder(client, assets, appdata):
    folder = appdata / "files" / "ext"
    folder.mkdir(parents=True, exist_ok=True)
    hostile.constant_external(folder / "escape.onnx", "../../../outside.bin")
    body = {"trained-model": "files/ext/escape.onnx", "dataset": "files/val.h5", "preprocessing": {}}
    r = client.post("/api/security_evaluations", json=body)
    assert r.status_code == 400 and "points outside" in r.get_json()["error"], r.get_json()


@pytest.mark.parametrize("case", hostile.HDF5_CASES, ids=[c[0] for c in hostile.HDF5_CASES])
def test_the_workers_reader_refuses_hostile_hdf5_too(tmp_path, case):
    from app.engine.data import H5Dataset

    with pytest.raises(InvalidFileError, match=re.escape(case[2])):
        H5Dataset(build(case, tmp_path, ".h5"))


def test_the_workers_reader_reads_labels_in_blocks_and_checks_num_classes(tmp_path, assets):
    from app.engine.assets import write_h5
    from app.engine.data import H5Dataset

    with H5Dataset(write_h5(tmp_path / "ok.h5", assets.x, assets.y, n_classes=12)) as data:
        assert data.n_classes == 12 and np.array_equal(data.labels, assets.y)


@pytest.mark.parametrize("chunks", [None, (1, 1, 8, 8), (3, 1, 5, 7), (7, 2, 8, 8), (16, 2, 1, 1), (1, 1, 1, 1)])
def test_the_chunk_aligned_scan_reads_every_value_once(tmp_path, monkeypatch, chunks):
    import h5py

    from app import inspection

    monkeypatch.setattr(inspection, "SCAN_BLOCK_BYTES", 300)  # many small blocks, across chunk edges
    monkeypatch.setattr(inspection, "SCAN_BLOCK_CHUNKS", 5)
    x = np.random.default_rng(5).normal(size=(16, 2, 8, 8)).astype(np.float32)
    path = tmp_path / "tiled.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("samples", data=x, chunks=chunks)
        f.create_dataset("labels", data=np.arange(16) % 7, chunks=(3,) if chunks else None)
    with h5py.File(path, "r") as f:
        seen = np.zeros(x.shape, np.int64)
        for where in inspection._tiles(f["samples"]):
            seen[where] += 1
        assert (seen == 1).all(), "the blocks must cover the samples exactly once"
    info = inspection.inspect_dataset(path)
    assert info["value-range"] == [float(x.min()), float(x.max())] and info["n-classes"] == 7
    with h5py.File(path, "r+") as f:
        f["samples"][15, 1, 7, 7] = np.nan
    with pytest.raises(InvalidFileError, match="NaN"):
        inspection.inspect_dataset(path)


# -- background validation, with a real worker ------------------------------------
@pytest.fixture
def small_inline_budget(monkeypatch):
    """The API scans inline only files of at most 1 KiB, so the digits set goes to a worker."""
    import app.inspection

    monkeypatch.setattr(app.inspection, "INLINE_SCAN_BYTES", 1024)


def test_big_upload_is_validated_in_the_background(
    settings, redis_server, appdata, assets, tmp_path, small_inline_budget, monkeypatch
):
    from app import create_app, validation
    from app.engine.assets import write_h5

    monkeypatch.setattr(validation, "VALIDATION_TIMEOUT", 3)  # the jobs' RQ time limit, set when enqueued
    queue = f"validate-{uuid.uuid4().hex[:8]}"
    client = create_app({**settings, "queue_name": queue}).test_client()
    good = upload(client, "datasets", assets.dataset)
    bad_path = write_h5(tmp_path / "nan.h5", np.where(assets.x > 0.5, np.nan, assets.x), assets.y, n_classes=10)
    bad = upload(client, "datasets", bad_path)
    assert good.status_code == bad.status_code == 202, (good.get_json(), bad.get_json())
    slow = upload(client, "datasets", hostile.slow_to_scan(tmp_path / "slow.h5"))
    assert slow.status_code == 202, slow.get_json()
    good_id, bad_id, slow_id = good.get_json()["id"], bad.get_json()["id"], slow.get_json()["id"]
    assert client.get(f"/api/datasets/{good_id}").get_json()["status"] == "validating"
    body = {"trained-model": "files/cnn.onnx", "dataset": good_id, "preprocessing": {}}
    r = client.post("/api/security_evaluations", json=body)
    assert r.status_code == 409 and "still being validated" in r.get_json()["error"] and r.headers["Retry-After"]
    named = {**body, "dataset": "files/val.h5"}
    r = client.post("/api/security_evaluations", json=named)
    assert r.status_code == 409 and r.get_json()["details"]["field"] == "dataset", r.get_json()
    # A named file too slow to scan: the worker's time limit rejects it, and the submit then says so.
    slow_name = f"files/slow-{queue}.h5"
    hostile.slow_to_scan(appdata / slow_name)
    named_slow = {**body, "dataset": slow_name}
    assert client.post("/api/security_evaluations", json=named_slow).status_code == 409

    worker = start_worker(redis_server.url, appdata, name=f"w-{queue}", QUEUE_NAME=queue)
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            views = [client.get(f"/api/datasets/{i}").get_json() for i in (good_id, bad_id, slow_id)]
            if all(v["status"] != "validating" for v in views):
                break
            time.sleep(0.2)
        ready, rejected, timed_out = views
        assert timed_out["status"] == "rejected" and "time limit (3 s)" in timed_out["reason"], timed_out
        assert ready["status"] == "ready" and ready["n-classes"] == 10 and ready["value-range"][1] <= 1, ready
        assert rejected["status"] == "rejected" and "NaN" in rejected["reason"], rejected
        assert client.post("/api/security_evaluations", json=body).status_code == 202
        r = client.post("/api/security_evaluations", json={**body, "dataset": bad_id})
        assert r.status_code == 422 and "was rejected" in r.get_json()["error"] and "NaN" in r.get_json()["error"]
        deadline = time.monotonic() + 60
        while (r := client.post("/api/security_evaluations", json=named)).status_code == 409 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert r.status_code == 202, r.get_json()
        deadline = time.monotonic() + 60
        while (r := client.post("/api/security_evaluations", json=named_slow)).status_code == 409 and time.monotonic() < deadline:
            time.sleep(0.2)
        assert r.status_code == 400 and "time limit (3 s)" in r.get_json()["error"], r.get_json()
        assert r.get_json()["details"]["field"] == "dataset"
    finally:
        stop_process(worker)
        (appdata / slow_name).unlink(missing_ok=True)


def test_a_lost_validation_job_turns_the_record_rejected(settings, redis_server, assets, small_inline_budget):
    from app import create_app
    from app import queue as jobqueue

    client = create_app({**settings, "queue_name": f"idle-{uuid.uuid4().hex[:8]}"}).test_client()
    file_id = upload(client, "datasets", assets.dataset).get_json()["id"]
    # Deleting the queued job is what a worker dying mid-scan, or a Redis without persistence, leaves behind.
    jobqueue.fetch_job(redis.Redis.from_url(redis_server.url), f"validate-dataset-{file_id}").delete()
    view = client.get(f"/api/datasets/{file_id}").get_json()
    assert view["status"] == "rejected" and "upload the file again" in view["reason"]


# -- the API's memory and answer time, against real gunicorn -------------------------
def _workers(master: int) -> list[int]:
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    return [int(c) for c in children]


def _hwm_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM")


def test_hostile_uploads_keep_api_memory_and_answer_time_bounded(redis_server, tmp_path, assets):
    """Every hostile file up to 10 MB: a JSON answer within 5 s, gunicorn workers' peak RSS up by at most 100 MB."""
    from app.client import ApiError, Client
    from app.redis_server import free_port

    appdata = tmp_path / "appdata"
    port = free_port()
    api = start_api(redis_server.url, appdata, port, QUEUE_NAME=f"rss-{uuid.uuid4().hex[:8]}")
    try:
        client = Client(f"http://127.0.0.1:{port}")
        for _ in range(6):  # warm both workers: first requests import and allocate lazily
            client.upload("datasets", assets.dataset)
            client.upload("models", assets.model, wait=False)  # no worker serves this queue: stays verifying
        workers = _workers(api.pid)
        assert len(workers) == 2
        before = {pid: _hwm_kb(pid) for pid in workers}
        files = [(c[0], "datasets", build(c, tmp_path / "h5", ".h5"), c[2], 422) for c in hostile.HDF5_CASES]
        files += [(c[0], "models", build(c, tmp_path / "onnx", ".onnx"), c[2], 422) for c in hostile.ONNX_CASES]
        files.append(("float64 rows under the inline budget", "datasets", hostile.float64_inline(tmp_path / "f64.h5"), "", 201))
        files.append(("over the inline budget", "datasets", hostile.background_sized(tmp_path / "bg.h5"), "validating", 202))
        files.append(("2M chunks to walk", "datasets", hostile.slow_to_scan(tmp_path / "slow.h5"), "validating", 202))
        timings = {}
        for name, kind, path, phrase, expected in files:
            assert path.stat().st_size <= 10 * 2**20, name
            t0 = time.monotonic()
            try:
                status, body = 201, client.upload(kind, path, wait=False)  # the answer itself, timed
            except ApiError as err:
                status, body = err.status, err.body
            timings[name] = time.monotonic() - t0
            assert isinstance(body, dict), (name, body)  # JSON, never an HTML error page
            assert (body.get("status") == "validating" and 202 or status) == expected, (name, status, body)
            assert phrase in json.dumps(body), (name, body)
        growth_mb = max(_hwm_kb(pid) - before[pid] for pid in workers) / 1024
        slowest = max(timings, key=timings.get)
        print(f"\nRSS growth {growth_mb:.1f} MB; slowest answer {timings[slowest]:.2f} s ({slowest})")
        assert growth_mb <= 100, growth_mb
        assert timings[slowest] <= 5, timings
    finally:
        stop_process(api)
        shutil.rmtree(appdata, ignore_errors=True)


def test_named_model_files_obey_the_upload_size_limit(settings, assets):
    """Parsing an ONNX file costs memory in proportion to its size: a named file gets the upload limit."""
    from app import create_app

    client = create_app({**settings, "max_upload_mb": 0}).test_client()
    body = {"trained-model": "files/cnn.onnx", "dataset": "files/val.h5", "preprocessing": {}}
    r = client.post("/api/security_evaluations", json=body)
    assert r.status_code == 400 and "larger than the 0 MB limit" in r.get_json()["error"], r.get_json()


def test_records_from_before_validation_statuses_count_as_ready(client, app, assets):
    """A dataset recorded by an older release has no status: it is shown ready and can be used."""
    uploaded = upload(client, "datasets", assets.dataset).get_json()
    with app.app_context():
        from app.extensions import get_records

        records = get_records()
        old = records.file("dataset", uploaded["id"])
        del old["status"]
        records.add_file("dataset", old)
    assert client.get(f"/api/datasets/{uploaded['id']}").get_json()["status"] == "ready"
    body = {"trained-model": "files/cnn.onnx", "dataset": uploaded["id"], "preprocessing": {}}
    assert client.post("/api/security_evaluations", json=body).status_code == 202
