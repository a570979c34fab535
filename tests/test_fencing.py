"""One running copy of a job, always: fencing tokens and in-loop cancellation, with real
workers, real work-horses and real signals (SIGSTOP stalls a work-horse past its lease)."""

from __future__ import annotations

import os
import signal
import threading
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import redis
from rq import Worker

from conftest import SLOW_REQUEST, queue_client, start_worker, stop_process, submit, wait_status

QUEUE = "fencing"
FAST_LEASE = {"LEASE_TTL": "2", "RECOVERY_GRACE": "1", "RECOVERY_INTERVAL": "0.5", "QUEUE_NAME": QUEUE}

ENDLESS = {**SLOW_REQUEST, "perturbation-values": [0, 0.001], "attack-params": {"steps": 10000, "restarts": 20}}


@pytest.fixture
def fclient(settings):
    return queue_client(settings, QUEUE)



def record(conn: redis.Redis, job_id: str) -> dict[str, str]:
    return {k.decode(): v.decode() for k, v in conn.hgetall(f"secev:evaluation:{job_id}").items()}


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def horse_pid(conn: redis.Redis, job_id: str) -> int:
    lease = wait_for(lambda: conn.get(f"secev:lease:{job_id}"), 120, "a lease")
    return int(lease.decode().split(":")[1])


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return None
    return st.st_ino, st.st_mtime_ns


def worker_state(conn: redis.Redis, name: str) -> str:
    return next(w for w in Worker.all(connection=conn) if w.name == name).get_state()


def test_stalled_work_horse_stops_and_writes_nothing_once_a_newer_attempt_owns_the_job(fclient, redis_server, appdata, assets):
    conn = redis.Redis.from_url(redis_server.url)
    tag = uuid.uuid4().hex[:6]
    a = start_worker(redis_server.url, appdata, name=f"stalled-{tag}", **FAST_LEASE)
    b = None
    pid_a = None
    try:
        job_id = submit(fclient, SLOW_REQUEST)
        pid_a = horse_pid(conn, job_id)
        token_a = record(conn, job_id)["token"]
        b = start_worker(redis_server.url, appdata, name=f"taker-{tag}", **FAST_LEASE)
        # Past the clean pass and the largest epsilon: a checkpoint exists to resume from.
        wait_for(lambda: int(record(conn, job_id)["progress-done"]) >= 2 * 120, 300, "progress")
        os.kill(pid_a, signal.SIGSTOP)
        stopped_at = int(record(conn, job_id)["progress-done"])
        # Recovery (in either worker) sees the lease lapse and re-queues; worker B claims attempt 2,
        # resumes, and gets past where A was stalled.
        wait_for(
            lambda: (
                (r := record(conn, job_id)).get("attempt") == "2"
                and r["status"] == "started"
                and int(r["progress-done"]) > stopped_at
            ),
            180,
            "attempt 2 to overtake the stalled one",
        )
        token_b = record(conn, job_id)["token"]
        assert token_b != token_a
        job_dir = Path(appdata) / "evaluations" / job_id
        seen_progress: list[int] = []
        stale_files: list[str] = []
        finished = threading.Event()

        def watch() -> None:
            while not finished.is_set():
                r = record(conn, job_id)
                if r.get("progress-done"):
                    seen_progress.append(int(r["progress-done"]))
                # A file of attempt 1 written before its stall may remain until attempt 2 cleans up;
                # any new or changed one is a write made after the takeover.
                stale_files.extend(
                    p.name for p in job_dir.glob(f"checkpoint.{token_a}*") if identity(p) != left_by_a.get(p.name)
                )
                try:
                    with np.load(job_dir / "checkpoint.npz", allow_pickle=False) as ck:
                        if token_a in str(ck["delta_file"]) and identity(job_dir / "checkpoint.npz") != before:
                            stale_files.append("a new checkpoint.npz names attempt 1's perturbations")
                except (OSError, ValueError, KeyError):
                    pass  # between B's rename and B's finish
                time.sleep(0.02)

        before = identity(job_dir / "checkpoint.npz")  # attempt 1's last checkpoint, if B has not saved yet
        # What attempt 1 left when it was stopped (a temporary checkpoint it was writing, say).
        left_by_a = {p.name: identity(p) for p in job_dir.glob(f"checkpoint.{token_a}*")}
        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        t_cont = time.monotonic()
        os.kill(pid_a, signal.SIGCONT)
        wait_for(lambda: not alive(pid_a), 30, "the stalled work-horse to exit")
        stopped_in = time.monotonic() - t_cont
        wait_for(lambda: worker_state(conn, f"stalled-{tag}") == "idle", 10, "worker A to be idle")
        status = wait_status(fclient, job_id, timeout=300)
        finished.set()
        watcher.join()
        print(f"stalled work-horse exited {stopped_in:.2f} s after SIGCONT")
        assert stopped_in < 5, f"the stale work-horse ran on for {stopped_in:.1f} s"
        assert status["job-status"] == "finished", status
        out = fclient.get(f"/api/security_evaluations/{job_id}/output").get_json()
        assert out["attempt"] == 2 and out["resumed"] is True
        assert all(b_ >= a_ for a_, b_ in zip(seen_progress, seen_progress[1:])), "progress went back after the takeover"
        assert not stale_files, stale_files
        assert conn.exists(f"secev:lease:{job_id}") == 0
        assert not list(job_dir.glob("delta*.npy")) and not list(job_dir.glob("checkpoint*"))
        assert a.poll() is None, "worker A itself must keep running"
    finally:
        if pid_a is not None and alive(pid_a):
            os.kill(pid_a, signal.SIGCONT)
        stop_process(a)
        if b is not None:
            stop_process(b)


@pytest.mark.parametrize("how", ["api-delete", "record-deleted-no-rq-stop"])
def test_delete_stops_a_10000_step_20_restart_job_within_2_seconds(fclient, redis_server, appdata, assets, how):
    from app.records import Records

    conn = redis.Redis.from_url(redis_server.url)
    name = f"endless-{uuid.uuid4().hex[:6]}"
    worker = start_worker(redis_server.url, appdata, name=name, QUEUE_NAME=QUEUE)
    try:
        job_id = submit(fclient, ENDLESS)
        pid = horse_pid(conn, job_id)
        wait_for(lambda: int(record(conn, job_id).get("progress-done", 0)) >= 120, 120, "the clean pass")
        time.sleep(1.0)  # deep inside the 10000-step loop now
        t0 = time.monotonic()
        if how == "api-delete":
            assert fclient.delete(f"/api/security_evaluations/{job_id}").status_code == 200
        else:
            Records(conn).delete_evaluation(job_id)  # only the record: RQ is never told
        wait_for(lambda: not alive(pid) and worker_state(conn, name) == "idle", 30, "the work-horse to stop")
        elapsed = time.monotonic() - t0
        print(f"{how}: work-horse gone and worker idle {elapsed:.2f} s after the delete")
        assert elapsed < 2, f"the work-horse ran on for {elapsed:.1f} s"
        assert conn.exists(f"secev:evaluation:{job_id}") == 0 and conn.exists(f"secev:result:{job_id}") == 0
        # The same worker serves the next job.
        nxt = submit(fclient, {**SLOW_REQUEST, "perturbation-values": [0.05], "attack-params": {"steps": 10}})
        assert wait_status(fclient, nxt, timeout=120)["job-status"] == "finished"
    finally:
        stop_process(worker)
