"""Hostile tenants (issue 7, classes 2 and 7): file names that reach into the service's own
folders or another tenant's, keys that share a prefix, and concurrent submits past the limit."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import threading
import uuid

import pytest

from conftest import start_worker, stop_process, upload_model, wait_status

KEYS = {"key-alice": "alice", "key-bob": "bob"}
ALICE, BOB = {"X-API-Key": "key-alice"}, {"X-API-Key": "key-bob"}
FAST = {"preprocessing": {}, "perturbation-values": [0.05], "evaluation-mode": "fast"}


def make_app(settings, **overrides):
    from app import create_app

    return create_app({**settings, "queue_name": "tenants-files", **overrides})


def body(model: str, dataset: str) -> dict:
    return {"trained-model": model, "dataset": dataset, **FAST}


def upload(client, kind: str, path, headers=None) -> dict:
    if kind == "models":
        return upload_model(client, path, headers=headers)
    r = client.post(
        f"/api/{kind}",
        headers=headers or {},
        content_type="multipart/form-data",
        data={"file": (io.BytesIO(path.read_bytes()), path.name)},
    )
    assert r.status_code == 201, r.get_json()
    return r.get_json()


def refused(client, headers, field: str, name: str, own: str) -> dict:
    """Submit naming ``name`` in ``field`` (the other field a valid file in the caller's folder
    ``own``) and expect a 400 that names the field."""
    refs = {"trained-model": f"{own}/cnn.onnx", "dataset": f"{own}/val.h5", field: name}
    r = client.post("/api/security_evaluations", headers=headers, json={**refs, **FAST})
    out = r.get_json()
    assert r.status_code == 400 and out["details"]["field"] == field, (name, r.status_code, out)
    return out


@pytest.fixture
def tenant_files(assets):
    """files/alice/ and files/bob/ each with a copy of the test model and dataset."""
    for name in ("alice", "bob"):
        folder = assets.dir / name
        folder.mkdir(exist_ok=True)
        for path in (assets.model, assets.dataset):
            shutil.copy(path, folder / path.name)
    return assets.dir


@pytest.fixture
def planted(appdata, assets, tenant_files):
    """Valid HDF5 files in each of the service's own folders and in bob's: only their place
    can refuse them. Removed afterwards (other tests check that uploads/ is left empty)."""
    from app.engine.assets import write_h5

    job_dir = appdata / "evaluations" / str(uuid.uuid4())
    paths = [job_dir / "samples.h5", appdata / "uploads" / "partial.h5", appdata / "redis" / "dump.h5"]
    paths.append(tenant_files / "bob" / "secret.h5")
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_h5(path, assets.x[:8], assets.y[:8], n_classes=10)
    yield paths
    for path in paths:
        path.unlink(missing_ok=True)
    shutil.rmtree(job_dir, ignore_errors=True)


def test_named_files_never_reach_the_services_own_folders_or_another_tenant(settings, appdata, assets, tenant_files, planted):
    client = make_app(settings, api_keys=KEYS).test_client()
    bobs = upload(client, "datasets", assets.dataset, BOB)
    bob_blob = f"blobs/{bobs['sha256'][:2]}/{bobs['sha256']}.h5"
    assert (appdata / bob_blob).is_file()
    link = tenant_files / "alice" / "link.h5"
    link.unlink(missing_ok=True)
    os.symlink(appdata / bob_blob, link)
    names = [bob_blob, *(p.relative_to(appdata).as_posix() for p in planted), "files/alice/link.h5", "files/val.h5"]
    own = "files/alice"
    for name in names:
        out = refused(client, ALICE, "dataset", name, own)
        assert "inside files/alice/" in out["error"] and out["details"]["allowed"] == "files/alice/", out
        assert str(appdata) not in out["error"]
    refused(client, ALICE, "trained-model", "files/bob/cnn.onnx", own)
    # The same files are fine where they belong: bob's own folder, alice's own folder.
    ok = client.post("/api/security_evaluations", headers=BOB, json=body("files/bob/cnn.onnx", "files/bob/secret.h5"))
    assert ok.status_code == 202, ok.get_json()
    ok = client.post("/api/security_evaluations", headers=ALICE, json=body(f"{own}/cnn.onnx", f"{own}/val.h5"))
    assert ok.status_code == 202, ok.get_json()


def test_open_service_confines_named_files_to_files_folder(client, appdata, assets):
    up = upload(client, "models", assets.model)
    blob = f"blobs/{up['sha256'][:2]}/{up['sha256']}.onnx"
    for name in (blob, "uploads/../blobs/x.onnx", "redis/appendonly.aof"):
        r = client.post("/api/security_evaluations", json=body(name, "files/val.h5"))
        assert r.status_code == 400 and r.get_json()["details"]["field"] == "trained-model", r.get_json()
    # A symlink inside files/ to a blob is refused too; the upload's own id keeps working.
    link = appdata / "files" / "blob-link.onnx"
    link.unlink(missing_ok=True)
    os.symlink(appdata / blob, link)
    r = client.post("/api/security_evaluations", json=body("files/blob-link.onnx", "files/val.h5"))
    assert r.status_code == 400 and "inside files/" in r.get_json()["error"]
    assert client.post("/api/security_evaluations", json=body(up["id"], "files/val.h5")).status_code == 202


def test_file_references_off_refuses_every_path_but_ids_still_work(settings, assets, tenant_files):
    client = make_app(settings, api_keys=KEYS, file_references=False).test_client()
    for name in ("files/alice/val.h5", "files/val.h5", "blobs/00/x.h5", "/etc/passwd"):
        r = client.post("/api/security_evaluations", headers=ALICE, json=body("files/alice/cnn.onnx", name))
        out = r.get_json()
        assert r.status_code == 400 and out["details"]["field"] in ("trained-model", "dataset"), out
        assert "file references are disabled" in out["error"] and "upload" in out["error"], out
    model = upload(client, "models", assets.model, ALICE)
    data = upload(client, "datasets", assets.dataset, ALICE)
    assert client.post("/api/security_evaluations", headers=ALICE, json=body(model["id"], data["id"])).status_code == 202


def test_setting_file_references(monkeypatch):
    from app.config import Config

    monkeypatch.setenv("FILE_REFERENCES", "off")
    assert Config.from_env().file_references is False
    monkeypatch.setenv("FILE_REFERENCES", "maybe")
    with pytest.raises(ValueError, match="FILE_REFERENCES"):
        Config.from_env()


def test_tenant_folders_are_derived_safely():
    from app.storage import tenant_folder

    assert tenant_folder("alice") == "alice"
    odd = ["../etc", "a/b", ".hidden", "Alice", "", "x" * 100, "bob\x00"]
    folders = {tenant_folder(t) for t in odd}
    assert len(folders) == len(odd) and all(f.startswith("_") and "/" not in f and ".." not in f for f in folders)


def test_symlink_swapped_after_submit_is_refused_by_the_worker(settings, redis_server, appdata, assets, tenant_files):
    """Between submit and run, alice swaps her named file for a symlink to bob's blob: the
    worker checks the file again, as alice, and the job fails without reading the blob."""
    queue = f"swap-{uuid.uuid4().hex[:6]}"
    client = make_app(settings, api_keys=KEYS, queue_name=queue).test_client()
    bobs = upload(client, "datasets", assets.dataset, BOB)
    mine = tenant_files / "alice" / "swap.h5"
    mine.unlink(missing_ok=True)
    shutil.copy(assets.dataset, mine)
    r = client.post("/api/security_evaluations", headers=ALICE, json=body("files/alice/cnn.onnx", "files/alice/swap.h5"))
    assert r.status_code == 202, r.get_json()
    job_id = r.get_json()["job_id"]
    mine.unlink()
    os.symlink(appdata / "blobs" / bobs["sha256"][:2] / f"{bobs['sha256']}.h5", mine)
    worker = start_worker(redis_server.url, appdata, name=queue, QUEUE_NAME=queue)
    try:
        status = wait_status(_as(client, ALICE), job_id, timeout=120)
    finally:
        stop_process(worker)
    assert status["job-status"] == "failed", status
    assert "files/alice/" in status["error"] and str(appdata) not in status["error"], status


class _as:
    """A test client that sends one tenant's key on every GET (for ``wait_status``)."""

    def __init__(self, client, headers) -> None:
        self.client, self.headers = client, headers

    def get(self, path: str):
        return self.client.get(path, headers=self.headers)


# -- class 7: tenants -------------------------------------------------------------------------


def test_bare_keys_sharing_a_prefix_are_different_tenants(settings, assets):
    from app.config import parse_api_keys

    one, two = "0123456789-first-secret", "0123456789-other-secret"
    keys = parse_api_keys([one, two])
    assert keys[one] == "key-" + hashlib.sha256(one.encode()).hexdigest()[:16]
    assert keys[one] != keys[two] and "0123456789" not in keys[one] + keys[two]
    client = make_app(settings, api_keys=keys).test_client()
    a, b = {"X-API-Key": one}, {"X-API-Key": two}
    model = upload(client, "models", assets.model, a)
    data = upload(client, "datasets", assets.dataset, a)
    assert client.get("/api/models", headers=b).get_json()["models"] == []
    assert client.get(f"/api/models/{model['id']}", headers=b).status_code == 404
    assert client.post("/api/security_evaluations", headers=b, json=body(model["id"], data["id"])).status_code in (400, 404)
    job = client.post("/api/security_evaluations", headers=a, json=body(model["id"], data["id"]))
    assert job.status_code == 202
    job_id = job.get_json()["job_id"]
    assert client.get("/api/security_evaluations", headers=b).get_json()["count"] == 0
    assert client.get(f"/api/security_evaluations/{job_id}", headers=b).status_code == 404
    assert client.delete(f"/api/security_evaluations/{job_id}", headers=b).status_code == 404
    assert client.get("/api/security_evaluations", headers=a).get_json()["count"] == 1


def test_concurrent_submits_never_exceed_the_per_key_limit(settings, redis_server, assets):
    import redis

    from app.records import Records

    app = make_app(settings, api_keys=KEYS, max_concurrent_jobs=2)
    setup = app.test_client()
    model = upload(setup, "models", assets.model, ALICE)["id"]
    data = upload(setup, "datasets", assets.dataset, ALICE)["id"]
    n = 16
    barrier, answers = threading.Barrier(n), []

    def submit() -> None:
        client = app.test_client()
        barrier.wait()
        r = client.post("/api/security_evaluations", headers=ALICE, json=body(model, data))
        answers.append((r.status_code, r.get_json()))

    threads = [threading.Thread(target=submit) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    codes = sorted(code for code, _ in answers)
    assert codes == [202] * 2 + [429] * (n - 2), codes
    assert all("at most 2" in out["error"] for code, out in answers if code == 429)
    accepted = [out["job_id"] for code, out in answers if code == 202]
    # A slot comes back when a job ends (the worker's path) or is deleted, and only then.
    records = Records(redis.Redis.from_url(redis_server.url))
    over = setup.post("/api/security_evaluations", headers=ALICE, json=body(model, data))
    assert over.status_code == 429
    records.set_status(accepted[0], "failed", error="test")
    assert setup.post("/api/security_evaluations", headers=ALICE, json=body(model, data)).status_code == 202
    assert setup.post("/api/security_evaluations", headers=ALICE, json=body(model, data)).status_code == 429
    assert setup.delete(f"/api/security_evaluations/{accepted[1]}", headers=ALICE).status_code == 200
    assert setup.post("/api/security_evaluations", headers=ALICE, json=body(model, data)).status_code == 202
    # Other keys are unaffected.
    bobs = body(upload(setup, "models", assets.model, BOB)["id"], upload(setup, "datasets", assets.dataset, BOB)["id"])
    assert setup.post("/api/security_evaluations", headers=BOB, json=bobs).status_code == 202
