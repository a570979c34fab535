"""Bounded load test on loopback (slow; `make load`): 50 concurrent clients submit 500
small jobs through gunicorn and poll them until every one has finished."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

from app.client import Client
from app.redis_server import RedisServer, free_port
from conftest import ROOT, start_api, start_worker, stop_process

CLIENTS, JOBS_PER_CLIENT, WORKERS = 50, 10, 2


@pytest.mark.slow
def test_50_clients_500_jobs_none_lost(tmp_path, assets):
    appdata = tmp_path / "appdata"
    (appdata / "files").mkdir(parents=True)
    for f in (assets.model, assets.dataset):
        (appdata / "files" / f.name).write_bytes(f.read_bytes())
    server = RedisServer(tmp_path / "redis").start()
    port = free_port()
    api = start_api(server.url, appdata, port)
    workers = [start_worker(server.url, appdata, name=f"load-{i}") for i in range(WORKERS)]
    body = {
        "trained-model": "files/cnn.onnx",
        "dataset": "files/val.h5",
        "preprocessing": {},
        "attack": "fgsm",
        "perturbation-values": [0, 0.05],
        "indexes": [0, 1, 2, 3],
    }
    errors, latencies, ids, lock = [], [], [], threading.Lock()

    def run_client():
        c = Client(f"http://127.0.0.1:{port}", timeout=60)
        mine = []
        for _ in range(JOBS_PER_CLIENT):
            try:
                mine.append(c.submit(body)["job_id"])
            except Exception as exc:
                errors.append(repr(exc))
        pending = set(mine)
        deadline = time.monotonic() + 900
        while pending and time.monotonic() < deadline:
            for job_id in list(pending):
                t0 = time.perf_counter()
                try:
                    st = c.status(job_id)
                except Exception as exc:
                    errors.append(repr(exc))
                    continue
                with lock:
                    latencies.append(time.perf_counter() - t0)
                if st["job-status"] == "finished":
                    pending.discard(job_id)
                elif st["job-status"] in ("failed", "canceled"):
                    errors.append(f"{job_id} {st['job-status']}: {st.get('error')}")
                    pending.discard(job_id)
            time.sleep(3.0)  # a polite client; 50 of them polling every second saturate 2 cores
        with lock:
            ids.extend(mine)
            errors.extend(f"{j} not finished" for j in pending)

    t0 = time.monotonic()
    threads = [threading.Thread(target=run_client) for _ in range(CLIENTS)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        elapsed = time.monotonic() - t0
        client = Client(f"http://127.0.0.1:{port}")
        finished = sum(1 for _ in client.items("security_evaluations", status="finished", page_size=1000))
        lat = sorted(latencies)
        report = {
            "clients": CLIENTS,
            "jobs": len(ids),
            "finished": finished,
            "errors": len(errors),
            "workers": WORKERS,
            "seconds": round(elapsed, 1),
            "jobs-per-second": round(len(ids) / elapsed, 2),
            "status-requests": len(lat),
            "status-p50-ms": round(1000 * lat[len(lat) // 2], 1),
            "status-p99-ms": round(1000 * lat[int(len(lat) * 0.99)], 1),
        }
        Path(ROOT / "benchmarks" / "load.json").write_text(json.dumps(report, indent=2) + "\n")
        print(report)
        assert errors == [], errors[:5]
        assert len(ids) == CLIENTS * JOBS_PER_CLIENT == finished
    finally:
        for w in workers:
            stop_process(w)
        stop_process(api)
        server.stop()
