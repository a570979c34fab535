"""The end-to-end demo: embedded Redis, the API under gunicorn, a worker, and the
demo model evaluated over HTTP. Everything it starts, it stops."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from .client import Client
from .redis_server import RedisServer, free_port

ROOT = Path(__file__).resolve().parent.parent
EPSILONS = [0.0, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2]


def start_services(appdata: Path, redis_url: str, port: int) -> list[subprocess.Popen]:
    env = {**os.environ, "REDIS_URL": redis_url, "APPDATA": str(appdata), "PYTHONUNBUFFERED": "1", "BIND": f"127.0.0.1:{port}"}
    log_dir = appdata / "logs"
    log_dir.mkdir(parents=True, exist_ok=True)
    api = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "python:app.gunicorn_conf"],
        cwd=ROOT,
        env=env,
        stdout=open(log_dir / "api.log", "ab"),
        stderr=subprocess.STDOUT,
    )
    worker = subprocess.Popen(
        [sys.executable, "worker.py"],
        cwd=ROOT,
        env=env,
        stdout=open(log_dir / "worker.log", "ab"),
        stderr=subprocess.STDOUT,
    )
    return [api, worker]


def wait_ready(client: Client, timeout: float = 60) -> dict[str, Any]:
    # This loop polls by itself: a probe without the client's retries notices a fresh server at once.
    probe = Client(client.base, api_key=client.api_key, retries=0)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            health = probe.health()
            if health.get("workers", 0) >= 1:
                return health
        except Exception:
            pass
        time.sleep(0.25)
    raise RuntimeError("the API or the worker did not come up; see appdata/logs/")


def stop(processes: list[subprocess.Popen]) -> None:
    for p in processes:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in processes:
        try:
            p.wait(timeout=20)
        except subprocess.TimeoutExpired:
            p.kill()


def run_demo(appdata: Path | None = None, output_dir: Path = Path("demo-output")) -> int:
    from .cli import print_curve
    from .engine.assets import demo_assets

    t0 = time.monotonic()
    appdata = (appdata or Path(os.environ.get("APPDATA", ROOT / "appdata"))).resolve()
    print(f"data directory: {appdata}")
    model_path, data_path = demo_assets(appdata / "demo")
    print(f"demo model {model_path.name} and dataset {data_path.name} ready ({time.monotonic() - t0:.1f} s)")
    redis_server = None
    redis_url = os.environ.get("REDIS_URL", "")
    if not redis_url:
        redis_server = RedisServer(appdata / "redis").start()
        redis_url = redis_server.url
        print(f"embedded Redis on port {redis_server.port} (append-only files in {redis_server.data_dir})")
    port = free_port()
    processes = start_services(appdata, redis_url, port)
    try:
        client = Client(f"http://127.0.0.1:{port}")
        health = wait_ready(client)
        print(f"API on http://127.0.0.1:{port} (gunicorn), {health['workers']} worker(s), version {health['version']}")
        model = client.upload("models", model_path)
        dataset = client.upload("datasets", data_path)
        print(
            f"uploaded model {model['id']} and dataset {dataset['id']} ({dataset['n-samples']} samples, "
            f"{dataset['n-classes']} classes)"
        )
        common = {"trained-model": model["id"], "dataset": dataset["id"], "perturbation-values": EPSILONS, "preprocessing": {}}
        attack = client.submit({**common, "attack": "pgd", "norm": "linf"})
        noise = client.submit({**common, "perturbation-type": "random"})
        print(f"submitted PGD evaluation {attack['job_id']} and random-noise baseline {noise['job_id']}")

        def show(st: dict[str, Any]) -> None:
            p = st["progress"]
            pct = 100 * p["done"] / p["total"] if p["total"] else 0
            print(f"\r  {st['job-status']:<9} {pct:5.1f}% ({p['done']}/{p['total']} sample-epsilon pairs)", end="", flush=True)

        result = client.wait(attack["job_id"], on_status=show)
        print()
        baseline = client.wait(noise["job_id"])
        print()
        print_curve(result, baseline=baseline)
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "curve.json").write_text(json.dumps({"pgd": result, "random": baseline}, indent=2) + "\n")
        with open(output_dir / "curve.csv", "w") as fh:
            fh.write("epsilon,accuracy_pgd,accuracy_random\n")
            for x, y, b in zip(
                result["sec-curve"]["x-values"], result["sec-curve"]["y-values"], baseline["sec-curve"]["y-values"]
            ):
                fh.write(f"{x},{y},{b}\n")
        print(f"curve written to {output_dir / 'curve.json'} and {output_dir / 'curve.csv'}")
        results = f"/api/security_evaluations/{attack['job_id']}"
        for name, path in (("plot.png", f"{results}/plot.png?baseline={noise['job_id']}"),
                           ("report.html", f"{results}/report?baseline={noise['job_id']}")):
            (output_dir / name).write_bytes(client.download(path))
        print(f"plot and report written to {output_dir / 'plot.png'} and {output_dir / 'report.html'} (open it in a browser)")
    finally:
        stop(processes)
        if redis_server:
            redis_server.stop()
    print(f"demo finished in {time.monotonic() - t0:.1f} s; services stopped")
    return 0
