"""What a failed job tells its user (no server paths, no tracebacks: those go to the worker's log),
and the worker's own bounds: per-job disk and memory checked before the job starts, out-of-memory
met by smaller batches. One real worker, with a low disk cap and memory budget, serves every job here."""

from __future__ import annotations

import uuid

import h5py
import numpy as np
import pytest
import torch

from conftest import queue_client, start_worker, stop_process, submit, wait_status

QUEUE = "bounds"
DISK_MB, MEMORY_MB = 1, 2
BASE = {"trained-model": "files/cnn.onnx", "dataset": "files/val.h5", "preprocessing": {}, "perturbation-values": [0, 0.05]}
BLOCKER = {**BASE, "perturbation-values": [0, 0.001], "attack-params": {"steps": 10000, "restarts": 20}}


@pytest.fixture(scope="module")
def bounded(redis_server, appdata, tmp_path_factory):
    """A worker with MAX_JOB_DISK_MB=1 and MAX_JOB_MEMORY_MB=2, its log captured."""
    log = tmp_path_factory.mktemp("worker-log") / "worker.log"
    with open(log, "wb") as fh:
        proc = start_worker(
            redis_server.url,
            appdata,
            name=f"bounded-{uuid.uuid4().hex[:6]}",
            stderr=fh,
            QUEUE_NAME=QUEUE,
            MAX_JOB_DISK_MB=str(DISK_MB),
            MAX_JOB_MEMORY_MB=str(MEMORY_MB),
        )
    yield proc, log
    stop_process(proc)


@pytest.fixture
def bclient(settings):
    return queue_client(settings, QUEUE)



def assert_no_server_path(text: str, appdata) -> None:
    assert str(appdata) not in text and str(appdata.resolve()) not in text, text
    assert "Traceback" not in text and 'File "' not in text, text


def gzip_dataset(path, assets) -> None:
    with h5py.File(path, "w") as fh:
        fh.create_dataset("samples", data=assets.x.astype(np.float32), chunks=(8, 1, 8, 8), compression="gzip")
        fh.create_dataset("labels", data=assets.y.astype(np.int64)).attrs["num_classes"] = 10


def corrupt_chunks(path) -> None:
    """Zero every compressed chunk in place: the file opens, reading samples fails in the filter."""
    with h5py.File(path, "r") as fh:
        ds = fh["samples"]
        chunks = [ds.id.get_chunk_info(i) for i in range(ds.id.get_num_chunks())]
    with open(path, "r+b") as fh:
        for c in chunks:
            fh.seek(c.byte_offset)
            fh.write(b"\0" * c.size)


def test_failed_jobs_name_the_problem_without_server_paths_and_the_log_has_the_traceback(bclient, bounded, appdata, assets):
    proc, log = bounded
    tag = uuid.uuid4().hex[:6]
    gone, broken = appdata / "files" / f"gone-{tag}.h5", appdata / "files" / f"broken-{tag}.h5"
    gzip_dataset(gone, assets)
    gzip_dataset(broken, assets)
    blocker = submit(bclient, BLOCKER)  # holds the one worker while the files change under the queued jobs
    wait_status(bclient, blocker, statuses=("started",))
    missing = submit(bclient, {**BASE, "dataset": f"files/gone-{tag}.h5"})
    unreadable = submit(bclient, {**BASE, "dataset": f"files/broken-{tag}.h5"})
    gone.unlink()  # h5py's error names the file by its absolute path
    corrupt_chunks(broken)  # an error the engine does not expect: its traceback went to users before
    assert bclient.delete(f"/api/security_evaluations/{blocker}").status_code == 200

    first = wait_status(bclient, missing)
    assert first["job-status"] == "failed"
    assert "cannot read the dataset" in first["error"] and f"files/gone-{tag}.h5" in first["error"], first["error"]
    assert_no_server_path(str(first), appdata)
    second = wait_status(bclient, unreadable)
    assert second["job-status"] == "failed" and "OSError" in second["error"], second["error"]
    assert second["details"] == {"exception": "OSError"}
    assert_no_server_path(str(second), appdata)
    logged = log.read_text()
    assert f"evaluation {unreadable} failed" in logged and "Traceback (most recent call last)" in logged
    assert "filter returned failure" in logged
    assert proc.poll() is None


def test_checkpoint_over_the_disk_cap_fails_naming_disk(bclient, bounded, appdata, assets):
    tag = uuid.uuid4().hex[:6]
    big = appdata / "files" / f"big-{tag}.h5"
    reps = 40  # 4800 samples of 1x8x8: 2 x 1.2 MB of checkpointed perturbations
    with h5py.File(big, "w") as fh:
        fh.create_dataset("samples", data=np.tile(assets.x, (reps, 1, 1, 1)).astype(np.float32))
        fh.create_dataset("labels", data=np.tile(assets.y, reps).astype(np.int64)).attrs["num_classes"] = 10
    job = submit(bclient, {**BASE, "dataset": f"files/big-{tag}.h5"})
    status = wait_status(bclient, job)
    assert status["job-status"] == "failed"
    assert "not enough disk" in status["error"] and "MAX_JOB_DISK_MB" in status["error"], status["error"]
    assert status["details"]["disk-needed-mb"] > DISK_MB and status["details"]["disk-limit-mb"] == DISK_MB
    assert_no_server_path(str(status), appdata)
    assert not list((appdata / "evaluations" / job).glob("delta*"))


def test_batch_over_the_memory_budget_is_lowered_and_the_job_finishes(bclient, bounded, assets):
    proc, _ = bounded
    job = submit(bclient, {**BASE, "batch-size": 4096})
    status = wait_status(bclient, job)
    assert status["job-status"] == "finished", status
    out = bclient.get(f"/api/security_evaluations/{job}/output").get_json()
    used = out["attack"]["batch-size"]
    assert out["attack"]["batch-size-requested"] == 4096 and 1 <= used < 4096
    print(f"batch-size 4096 lowered to {used} under a {MEMORY_MB} MB budget")
    ys = out["sec-curve"]["y-values"]
    assert out["n-samples"] == 120 and ys[1] <= ys[0]
    # After the failures above, the same worker process finishes a normal job.
    normal = submit(bclient, BASE)
    assert wait_status(bclient, normal)["job-status"] == "finished"
    assert proc.poll() is None


class RunsOutOfMemory(torch.nn.Module):
    """A real model that raises the allocator's out-of-memory error on batches over ``limit``
    (a fault this machine cannot be made to cause for real at a chosen batch size)."""

    def __init__(self, net: torch.nn.Module, limit: int) -> None:
        super().__init__()
        self.net, self.limit = net, limit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(x) > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return self.net(x)


def test_out_of_memory_during_the_sweep_halves_the_batch_and_goes_on(assets):
    from app.engine.attacks import PGD, ArraySource, OutOfMemory

    net = assets.net.eval()
    source = ArraySource(assets.x, assets.y)
    eps = [0.0, 0.05, 0.1]
    attack = PGD(steps=10, batch_size=128, autocast=False)
    state = attack.sweep(RunsOutOfMemory(net, 40), source, eps, (0.0, 1.0))
    assert attack.batch_size <= 40 // attack.pool_batches
    acc = state.accuracy(len(eps))
    with torch.no_grad():
        clean = float((net(torch.from_numpy(assets.x)).argmax(1).numpy() == assets.y).mean())
    assert acc[0] == pytest.approx(clean) and acc[2] <= acc[1] <= acc[0]
    with pytest.raises(OutOfMemory):
        PGD(steps=10, batch_size=4).sweep(RunsOutOfMemory(net, 0), source, eps, (0.0, 1.0))


def test_scrub_hides_paths_and_tracebacks(tmp_path):
    from app.redact import scrub, scrub_details

    root = tmp_path / "appdata"
    msg = f"cannot open name = '{root}/files/x.h5' or /etc/passwd\nTraceback (most recent call last):\n  File \"/a.py\", line 1"
    out = scrub(msg, root)
    assert out == "cannot open name = 'files/x.h5' or <path>"
    assert scrub_details({"traceback": "x", "where": f"{root}/blobs/ab"}, root) == {"where": "blobs/ab"}
    assert len(scrub("x" * 5000, root)) == 1000
