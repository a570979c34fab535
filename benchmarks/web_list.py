"""How long the web UI's list takes with N finished evaluations (default 100), in headless Chromium.

Records are written straight into a fresh Redis (the list reads records, not files), each with an output of
the size a finished evaluation has with its figures and checks; the API runs under gunicorn as in production.
Prints the list API's answer time with and without ``include=summary`` and the page's time until every
row shows its thumbnail.  Usage: ``.venv/bin/python benchmarks/web_list.py [N]``.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import redis  # noqa: E402
from browser import chrome, wait_for  # noqa: E402

from app.records import Records  # noqa: E402
from app.redis_server import RedisServer, free_port  # noqa: E402
from conftest import start_api, stop_process  # noqa: E402


def output(i: int) -> dict:
    xs = [0.0, 0.01, 0.02, 0.03, 0.05, 0.1]
    ys = [0.97 - i % 7 * 0.01 - 0.15 * k for k in range(len(xs))]
    per_eps = [
        {"epsilon": x, "epsilon-absolute": x, "n": 360, "accuracy": y, "accuracy-ci95": [y - 0.04, y + 0.04],
         "attack-success-rate": 0.1 * k, "attack-success-rate-ci95": [0.0, 0.2], "mean-true-confidence": y,
         "per-class-accuracy": [y] * 10}
        for k, (x, y) in enumerate(zip(xs, ys))
    ]
    checks = [{"name": f"check-{k}", "status": "pass", "message": "a sentence a non-expert understands " * 2, "value": 0.1}
              for k in range(9)]
    return {"sec-curve": {"x-values": xs, "y-values": ys}, "clean-accuracy": ys[0], "sec-value": 0.6, "sec-level": "medium",
            "n-samples": 360, "attack": {"name": "pgd", "norm": "linf", "params": {"steps": 50}, "epsilons-absolute": xs},
            "figures": {"classes": list(range(10)), "class-counts": [36] * 10, "per-epsilon": per_eps}, "checks": checks,
            "reliable": True}


def timed_get(url: str) -> float:
    start = time.perf_counter()
    with urllib.request.urlopen(url, timeout=60) as resp:
        resp.read()
    return time.perf_counter() - start


def main(n: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        server = RedisServer(Path(tmp) / "redis").start()
        records = Records(redis.Redis.from_url(server.url))
        request = {"trained-model": "files/cnn.onnx", "dataset": "files/val.h5", "attack": "pgd", "norm": "linf",
                   "perturbation-values": [0, 0.1], "evaluation-mode": "complete", "attack-params": {"steps": 50}}
        for i in range(n):
            job = records.create_evaluation(request, "public", {})
            records.set_status(job, "finished", result=output(i))
        size = len(json.dumps(output(0)))
        port = free_port()
        api = start_api(server.url, Path(tmp) / "appdata", port)
        base = f"http://127.0.0.1:{port}"
        try:
            plain = [timed_get(f"{base}/api/security_evaluations?limit=200") for _ in range(10)]
            summary = [timed_get(f"{base}/api/security_evaluations?limit=200&include=summary") for _ in range(10)]
            driver = chrome(Path(tmp) / "profile", Path(tmp) / "downloads")
            pages = []
            for _ in range(5):
                start = time.perf_counter()
                driver.get(base + "/")
                wait_for(lambda: len(driver.find_elements("css selector", "svg.thumb polyline")) == n, 60, "the thumbnails", 0.01)
                pages.append(time.perf_counter() - start)
            driver.quit()
        finally:
            stop_process(api)
            server.stop()
    print(f"{n} finished evaluations, outputs of {size} bytes each")
    print(f"GET /api/security_evaluations?limit=200: median {statistics.median(plain) * 1000:.0f} ms")
    print(f"  ... &include=summary:                  median {statistics.median(summary) * 1000:.0f} ms")
    print(f"list page until every thumbnail is drawn: median {statistics.median(pages) * 1000:.0f} ms "
          f"(min {min(pages) * 1000:.0f}, max {max(pages) * 1000:.0f}, 5 loads)")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100)
