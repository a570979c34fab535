"""One sharded evaluation on 1 worker against 2 (or more): wall time, real workers, real Redis.

    .venv/bin/python benchmarks/shards.py [--samples 2048] [--steps 20] [--workers 1 2] [--out benchmarks/SHARDS.md]

Builds the demo CNN and a digits dataset of ``--samples`` samples (the validation split, tiled),
starts a real Redis and real RQ workers (``worker.py``), and submits through the API's own code
(the Flask app in-process). It times, from submit to ``finished``,
the evaluation unsharded (``shards: 1``) on the first worker count, and sharded (``shards`` = the
largest worker count) on every worker count, and checks each curve equals the unsharded one. ``rows()`` returns the table rows
for ``benchmarks/run.py``.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import redis

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def build_assets(files: Path, n_samples: int) -> None:
    from app.engine.assets import digits, digits_cnn, export_onnx, train, write_h5

    xtr, ytr, xva, yva = digits()
    export_onnx(train(digits_cnn(softmax=True), xtr, ytr, epochs=8), (1, 8, 8), files / "cnn.onnx")
    reps = -(-n_samples // len(yva))
    write_h5(files / "big.h5", np.tile(xva, (reps, 1, 1, 1))[:n_samples], np.tile(yva, reps)[:n_samples], n_classes=10)


def start_workers(n: int, redis_url: str, appdata: Path, queue: str, tag: str, threads: int = 0) -> list[subprocess.Popen]:
    """``n`` real workers; ``threads`` > 0 caps each work-horse's torch threads (OMP_NUM_THREADS)."""
    env = {**os.environ, "REDIS_URL": redis_url, "APPDATA": str(appdata), "QUEUE_NAME": queue, "PYTHONPATH": str(ROOT)}
    if threads > 0:
        env["OMP_NUM_THREADS"] = str(threads)
    names = [f"bench-{tag}-{i}" for i in range(n)]
    procs = [
        subprocess.Popen([sys.executable, str(ROOT / "worker.py"), "--log-level", "WARNING", "--name", name], cwd=ROOT, env=env)
        for name in names
    ]
    from rq import Worker

    conn, deadline = redis.Redis.from_url(redis_url), time.monotonic() + 120
    while {w.name for w in Worker.all(connection=conn)} < set(names):
        if time.monotonic() > deadline or any(p.poll() is not None for p in procs):
            raise RuntimeError("workers did not start")
        time.sleep(0.2)
    return procs


def run_once(client, body: dict[str, Any], timeout: float = 3600) -> tuple[float, dict[str, Any]]:
    """Submit, wait for ``finished``; wall seconds from submit and the output."""
    t0 = time.perf_counter()
    r = client.post("/api/security_evaluations", json=body)
    assert r.status_code == 202, r.get_json()
    job_id = r.get_json()["job_id"]
    while (st := client.get(f"/api/security_evaluations/{job_id}").get_json())["job-status"] not in ("finished", "failed"):
        if time.perf_counter() - t0 > timeout:
            raise TimeoutError(job_id)
        time.sleep(0.05)
    wall = time.perf_counter() - t0
    assert st["job-status"] == "finished", st
    return wall, client.get(f"/api/security_evaluations/{job_id}/output").get_json()


def rows(
    samples: int = 2048, steps: int = 20, workers: tuple[int, ...] = (1, 2), shard_size: int = 1024, threads: int = 0
) -> list[dict[str, Any]]:
    """One row per (worker count, shards): wall seconds from submit to finished, and the curve check."""
    from app import create_app
    from app.redis_server import RedisServer

    with tempfile.TemporaryDirectory(prefix="secev-shards-") as tmp:
        appdata = Path(tmp) / "appdata"
        (appdata / "files").mkdir(parents=True)
        build_assets(appdata / "files", samples)
        server = RedisServer(Path(tmp) / "redis").start()
        body = {
            "trained-model": "files/cnn.onnx",
            "dataset": "files/big.h5",
            "preprocessing": {},
            "perturbation-values": [0, 0.02, 0.05, 0.1, 0.2],
            "attack": "pgd",
            "attack-params": {"steps": steps},
            "shard-size": shard_size,
            "seed": 0,
        }
        shards = max(workers)
        out: list[dict[str, Any]] = []
        reference = None
        try:
            for n in workers:
                queue = f"bench-{n}"
                client = create_app({"redis_url": server.url, "appdata": str(appdata), "queue_name": queue}).test_client()
                procs = start_workers(n, server.url, appdata, queue, f"{n}-{os.getpid()}", threads)
                try:
                    for count in (1, shards) if n == workers[0] else (shards,):
                        wall, result = run_once(client, {**body, "shards": count})
                        reference = reference or result["sec-curve"]
                        out.append(
                            {
                                "workers": n,
                                "threads": threads or "default",
                                "shards": result.get("shards", {}).get("count", 1),
                                "samples": result["n-samples"],
                                "wall-seconds": round(wall, 2),
                                "compute-seconds": result["timing"]["total-seconds"],
                                "same-curve": result["sec-curve"] == reference,
                            }
                        )
                        print(out[-1], flush=True)
                finally:
                    for p in procs:
                        p.terminate()
                    for p in procs:
                        p.wait(timeout=60)
        finally:
            server.stop()
    return out


def table(results: list[dict[str, Any]], steps: int) -> str:
    """The rows as a markdown table (speed-ups against the first worker count's runs)."""
    first = min(r["workers"] for r in results)
    base = {r["shards"]: r["wall-seconds"] for r in results if r["workers"] == first}
    lines = [
        f"PGD ({steps} steps, 5 epsilons) on the demo CNN, {results[0]['samples']} samples; "
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
        f"torch threads per work-horse: {results[0]['threads']}.",
        "",
        f"| workers | shards | wall s (submit to finished) | vs unsharded on {first} | vs {first} worker(s), same shards "
        "| compute s (sum over shards) | curve = unsharded |",
        "|---:|---:|---:|---:|---:|---:|:---:|",
    ]
    for r in results:
        wall = r["wall-seconds"] or float("nan")
        lines.append(
            f"| {r['workers']} | {r['shards']} | {wall:.1f} | {base.get(1, wall) / wall:.2f}x | {base[r['shards']] / wall:.2f}x "
            f"| {r['compute-seconds']:.1f} | {'yes' if r['same-curve'] else 'NO'} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=2048)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--shard-size", type=int, default=1024)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--threads", type=int, default=0, help="torch threads per work-horse (0: torch's default)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "SHARDS.md")
    args = ap.parse_args()
    results = rows(args.samples, args.steps, tuple(args.workers), args.shard_size, args.threads)
    text = "# One evaluation over several workers\n\n" + table(results, args.steps)
    args.out.write_text(text)
    print(text)


if __name__ == "__main__":
    main()
