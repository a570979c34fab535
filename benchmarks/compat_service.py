"""The matrix's live-service stage: each case that loads is uploaded and evaluated end to end.

The service is started as ``app/demo.py`` starts it (embedded Redis, the API under gunicorn,
one worker) and driven through ``app.client.Client``. Each case gets a small dataset at its
resolution whose labels are onnxruntime's predictions for half the samples and a wrong class
for the other half, so onnxruntime's clean accuracy is known exactly; the service's accuracy at
epsilon 0 must equal it.
"""

from __future__ import annotations

import os
import shutil
import time
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from app.client import Client
from app.demo import start_services, stop, wait_ready
from app.engine.assets import write_h5
from app.redis_server import RedisServer, free_port

SAMPLES = 16
CLASSES = 10


def upload_bundle(folder: Path) -> Path:
    """The file to upload for an export: the graph alone, or the graph and its data zipped together."""
    graph = folder / "model.onnx"
    data = [p for p in folder.iterdir() if p.name.startswith("model.onnx.")]
    if not data:
        return graph
    bundle = folder / "model.zip"
    with zipfile.ZipFile(bundle, "w", zipfile.ZIP_STORED) as archive:
        for path in [graph, *data]:
            archive.write(path, path.name)
    return bundle


def labelled_samples(
    reference: Callable[[np.ndarray], np.ndarray], size: int, seed: int = 7
) -> tuple[np.ndarray, np.ndarray, float]:
    """Samples, labels and onnxruntime's accuracy on them (one half right, the other half wrong)."""
    x = np.random.default_rng(seed).random((SAMPLES, 3, size, size), dtype=np.float32)
    predicted = reference(x).reshape(SAMPLES, -1).argmax(1)
    labels = np.where(np.arange(SAMPLES) < SAMPLES // 2, predicted, (predicted + 1) % CLASSES)
    return x, labels, float((predicted == labels).mean())


class Service:
    """Embedded Redis, gunicorn and one worker on a private data directory; ``close`` stops them all."""

    def __init__(self, appdata: Path) -> None:
        self.appdata = appdata
        self.redis = RedisServer(appdata / "redis").start()
        port = free_port()
        saved = os.environ.get("MAX_UPLOAD_MB")
        os.environ["MAX_UPLOAD_MB"] = saved or "2048"  # VGG and AlexNet exports are 250-550 MB; the services read it at start
        try:
            self.processes = start_services(appdata, self.redis.url, port)
        finally:
            if saved is None:
                del os.environ["MAX_UPLOAD_MB"]
        self.client = Client(f"http://127.0.0.1:{port}", timeout=300)
        wait_ready(self.client, timeout=120)

    def settled(self, kind: str, record: dict[str, Any], timeout: float = 600) -> dict[str, Any]:
        """The file's record once background validation (if any) has decided."""
        deadline = time.monotonic() + timeout
        while record.get("status") in ("validating", "verifying") and time.monotonic() < deadline:
            time.sleep(0.5)
            record = self.client.json("GET", f"/api/{kind}/{record['id']}")
        return record

    def evaluate(self, folder: Path, size: int, reference: Callable[[np.ndarray], np.ndarray]) -> dict[str, Any]:
        """Upload the export in ``folder`` and a dataset, evaluate at epsilon 0, compare with ``reference``
        (onnxruntime on the same file)."""
        t0 = time.perf_counter()
        try:
            x, labels, expected = labelled_samples(reference, size)
            data = write_h5(folder / "data.h5", x, labels, n_classes=CLASSES)
            model = self.settled("models", self.client.upload("models", upload_bundle(folder)))
            dataset = self.settled("datasets", self.client.upload("datasets", data))
            if model.get("status") not in (None, "ready"):
                return {"ok": False, "model-status": model.get("status"), "reason": model.get("reason")}
            job = self.client.submit(
                {"trained-model": model["id"], "dataset": dataset["id"], "perturbation-values": [0.0], "preprocessing": {}}
            )
            output = self.client.wait(job["job_id"], timeout=900)
            clean = float(output["sec-curve"]["y-values"][0])
            notes = output.get("model-notes", {})
            return {
                "ok": clean == expected,
                "clean": clean,
                "onnxruntime": expected,
                "converter": notes.get("converter"),
                "batch-1-only": bool(notes.get("batch-1-only")),
                "s": round(time.perf_counter() - t0, 1),
            }
        except Exception as exc:  # a failed upload or job is this case's result
            return {"ok": False, "error": f"{type(exc).__name__}: {exc}"[:300]}
        finally:
            shutil.rmtree(self.appdata / "blobs", ignore_errors=True)  # bounds the disk a full matrix needs

    def close(self) -> None:
        stop(self.processes)
        self.redis.stop()
