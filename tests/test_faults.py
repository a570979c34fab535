"""Faults caused for real: workers killed mid-job, timeouts; and tenants kept apart."""

from __future__ import annotations

import os
import signal
import time
import uuid

import pytest

from conftest import SLOW_REQUEST, start_worker, stop_process, submit, upload_model, wait_status


def kill_group(proc, horse_pid: int | None = None) -> None:
    """SIGKILL the worker and its work-horse (RQ gives the horse a process group of its own)."""
    if horse_pid:
        os.kill(horse_pid, signal.SIGKILL)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def wait_progress(client, job_id, at_least: int, timeout=300) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        st = client.get(f"/api/security_evaluations/{job_id}").get_json()
        if st["job-status"] == "started" and st["progress"]["done"] >= at_least:
            return st
        time.sleep(0.1)
    raise AssertionError(f"no progress: {st}")


@pytest.mark.parametrize("survivor", [True, False], ids=["second-worker-takes-over", "single-worker-restarted"])
def test_worker_killed_mid_job_is_rerun_once_and_resumes(client, redis_server, appdata, assets, survivor):
    tag = uuid.uuid4().hex[:6]  # a SIGKILLed worker's registration outlives it: never reuse a name
    a = start_worker(redis_server.url, appdata, name=f"doomed-{tag}")
    b = None
    try:
        job_id = submit(client, SLOW_REQUEST)
        wait_progress(client, job_id, at_least=0)  # the doomed worker holds it
        b = start_worker(redis_server.url, appdata, name=f"survivor-{tag}") if survivor else None
        # Past the clean pass and the largest epsilon: a checkpoint exists.
        wait_progress(client, job_id, at_least=2 * 120)
        import redis

        conn = redis.Redis.from_url(redis_server.url)
        horse = int(conn.get(f"secev:lease:{job_id}").decode().split(":")[1])
        t_kill = time.monotonic()
        kill_group(a, horse)  # SIGKILL: nothing runs its cleanup
        if b is None:
            b = start_worker(redis_server.url, appdata, name=f"restarted-{tag}")
        status = wait_status(client, job_id, timeout=300)  # generous: a loaded 2-core box
        recovered_in = time.monotonic() - t_kill
        assert status["job-status"] == "finished", status
        out = client.get(f"/api/security_evaluations/{job_id}/output").get_json()
        assert out["attempt"] == 2 and out["resumed"] is True
        assert out["sec-curve"]["x-values"] == SLOW_REQUEST["perturbation-values"]
        assert conn.get(f"secev:result:{job_id}") is not None
        assert conn.exists(f"secev:lease:{job_id}") == 0
        print(f"recovered and finished {recovered_in:.1f} s after SIGKILL")
    finally:
        if a.poll() is None:
            kill_group(a)
        if b is not None:
            stop_process(b)


def test_job_timeout_fails_with_an_actionable_message(settings, redis_server, appdata, assets):
    from app import create_app

    client = create_app({**settings, "job_timeout": 2, "queue_name": "short"}).test_client()
    worker = start_worker(redis_server.url, appdata, name="short-worker", QUEUE_NAME="short")
    try:
        job_id = submit(client, SLOW_REQUEST)
        status = wait_status(client, job_id, timeout=60)
        assert status["job-status"] == "failed"
        assert "job timeout (2 s" in status["error"] and "fast" in status["error"]
    finally:
        stop_process(worker)


@pytest.fixture
def tenants(settings, assets):
    import shutil

    from app import create_app

    # With API keys, files named in requests must lie in the tenant's own folder under files/.
    for name in ("alice", "bob"):
        (assets.dir / name).mkdir(exist_ok=True)
        for path in (assets.model, assets.dataset):
            shutil.copy(path, assets.dir / name / path.name)

    app = create_app(
        {**settings, "api_keys": {"key-alice": "alice", "key-bob": "bob"}, "max_concurrent_jobs": 1, "queue_name": "tenants"}
    )
    client = app.test_client()

    def as_(key):
        return {"X-API-Key": key}

    return client, as_("key-alice"), as_("key-bob")


def test_api_keys_required_everywhere_but_health(tenants):
    client, alice, _ = tenants
    assert client.get("/api/health").status_code == 200
    for path in ("/api/models", "/api/datasets", "/api/security_evaluations"):
        r = client.get(path)
        assert r.status_code == 401 and "API key" in r.get_json()["error"]
        assert client.get(path, headers={"X-API-Key": "wrong"}).status_code == 401
        assert client.get(path, headers=alice).status_code == 200
    assert client.get("/api/models", headers={"Authorization": "Bearer key-alice"}).status_code == 200


def own(tenant: str, **fields) -> dict:
    return {**SLOW_REQUEST, "trained-model": f"files/{tenant}/cnn.onnx", "dataset": f"files/{tenant}/val.h5", **fields}


def test_tenants_see_and_delete_only_their_own(tenants, assets):
    client, alice, bob = tenants
    model_id = upload_model(client, assets.model, name="m.onnx", headers=alice)["id"]
    assert client.get("/api/models", headers=bob).get_json()["models"] == []
    assert client.get(f"/api/models/{model_id}", headers=bob).status_code == 404
    r = client.post("/api/security_evaluations", headers=bob, json=own("bob", **{"trained-model": model_id}))
    assert r.status_code == 404 or r.status_code == 400
    job = client.post("/api/security_evaluations", headers=alice, json=own("alice", **{"trained-model": model_id}))
    assert job.status_code == 202
    job_id = job.get_json()["job_id"]
    assert client.get("/api/security_evaluations", headers=bob).get_json()["count"] == 0
    assert client.get(f"/api/security_evaluations/{job_id}", headers=bob).status_code == 404
    assert client.delete(f"/api/security_evaluations/{job_id}", headers=bob).status_code == 404
    assert client.get(f"/api/security_evaluations/{job_id}", headers=alice).status_code == 200
    # Per-key limit on unfinished jobs: alice has one queued, bob has none.
    second = client.post("/api/security_evaluations", headers=alice, json=own("alice"))
    assert second.status_code == 429 and "at most 1" in second.get_json()["error"]
    assert client.post("/api/security_evaluations", headers=bob, json=own("bob")).status_code == 202
    assert client.delete(f"/api/security_evaluations/{job_id}", headers=alice).status_code == 200


def test_api_keys_from_a_file(tmp_path, monkeypatch):
    from app.config import Config

    keys = tmp_path / "keys"
    keys.write_text("# tenants\nalice:k1\nbob:k2\n")
    monkeypatch.setenv("API_KEYS_FILE", str(keys))
    monkeypatch.setenv("API_KEYS", "carol:k3")
    assert Config.from_env().api_keys == {"k3": "carol", "k1": "alice", "k2": "bob"}


def test_redis_password_is_supported(tmp_path, appdata):
    from app import create_app
    from app.redis_server import RedisServer

    with RedisServer(tmp_path / "r", password="s3cret") as server:
        ok = create_app({"redis_url": server.url, "appdata": str(appdata)}).test_client()
        assert ok.get("/api/health").get_json()["redis"] is True
        bad = create_app({"redis_url": f"redis://127.0.0.1:{server.port}/0", "appdata": str(appdata)}).test_client()
        assert bad.get("/api/health").status_code == 503


def test_no_debug_server_in_any_configuration(monkeypatch, settings):
    from app import create_app

    monkeypatch.setenv("FLASK_DEBUG", "1")
    app = create_app(settings)
    assert app.debug is False
    r = app.test_client().get("/api/does-not-exist")
    assert r.status_code == 404 and "Traceback" not in r.get_data(as_text=True)
