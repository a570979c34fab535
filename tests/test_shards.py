"""One evaluation over several workers: shards of samples, merged into one output identical to the
unsharded one. Real Redis, real RQ workers (each test's own queue), real files."""

from __future__ import annotations

import time
import uuid

import numpy as np
import pytest
import redis
from test_faults import kill_group

from conftest import queue_client, start_worker, stop_process, submit, wait_status

FAST_LEASE = {"LEASE_TTL": "2", "RECOVERY_GRACE": "1", "RECOVERY_INTERVAL": "0.5"}
# 120 samples in blocks of 32: shards of whole blocks, batches of 16 inside them.
REQUEST = {
    "trained-model": "files/cnn.onnx",
    "dataset": "files/val.h5",
    "preprocessing": {},
    "perturbation-values": [0, 0.05, 0.1, 0.2],
    "attack-params": {"steps": 20},
    "batch-size": 16,
    "shard-size": 32,
    "seed": 7,
}
SLOW = {**REQUEST, "perturbation-values": [0, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15], "attack-params": {"steps": 60}}


@pytest.fixture
def pool(settings, redis_server, appdata, assets):
    """A test client whose jobs go to a queue of their own, and a way to start workers on it."""
    queue = f"shards-{uuid.uuid4().hex[:8]}"
    started: list = []

    def add(name: str, **env: str):
        proc = start_worker(redis_server.url, appdata, name=f"{name}-{queue}", QUEUE_NAME=queue, **FAST_LEASE, **env)
        started.append(proc)
        return proc

    yield queue_client(settings, queue), add
    for proc in started:
        if proc.poll() is None:
            stop_process(proc)


def samples(work_dir) -> dict[str, np.ndarray]:
    with np.load(work_dir / "samples.npz", allow_pickle=False) as f:
        return {name: f[name] for name in f.files}


def without_confidence(figures: dict) -> dict:
    rows = [{k: v for k, v in row.items() if k != "mean-true-confidence"} for row in figures["per-epsilon"]]
    return {**{k: v for k, v in figures.items() if k != "mean-true-confidence-clean"}, "per-epsilon": rows}


def assert_identical(client, appdata, sharded: str, whole: str, crashed: bool = False) -> dict:
    """The sharded output's curve, figures and per-sample arrays equal the unsharded one's, exactly.

    ``crashed``: a shard's worker was killed mid-pass. Its resumed attempt warm-starts from the rows the killed
    one had already rewritten in place after its last checkpoint, so the points the attack finds (and their
    true-class confidences) may differ for a few samples; every outcome, and so every other figure, is the same."""
    a = client.get(f"/api/security_evaluations/{sharded}/output").get_json()
    b = client.get(f"/api/security_evaluations/{whole}/output").get_json()
    assert a["sec-curve"] == b["sec-curve"] and a["sec-value"] == b["sec-value"] and a["n-samples"] == b["n-samples"] == 120
    # Recomputed by the merge from the concatenated per-sample arrays.
    assert without_confidence(a["figures"]) == without_confidence(b["figures"])
    conf = [
        (ra["mean-true-confidence"], rb["mean-true-confidence"])
        for ra, rb in zip(a["figures"]["per-epsilon"], b["figures"]["per-epsilon"])
    ]
    assert all(ca == pytest.approx(cb, abs=0.05 if crashed else 0) for ca, cb in conf), conf
    assert [c["name"] for c in a["checks"]] == [c["name"] for c in b["checks"]] and isinstance(a["reliable"], bool)
    sa, sb = samples(appdata / "evaluations" / sharded), samples(appdata / "evaluations" / whole)
    assert sorted(sa) == sorted(sb)
    for name in sa:
        if crashed and name == "true_conf":
            assert np.abs(sa[name] - sb[name]).max() < 1, name
            continue
        assert np.array_equal(sa[name], sb[name], equal_nan=True), name
    return a


def shard_ids(redis_url: str, parent: str) -> list[str]:
    import json

    return json.loads(redis.Redis.from_url(redis_url).hget(f"secev:evaluation:{parent}", "shards"))["ids"]


def test_sharded_evaluation_equals_the_unsharded_one_and_progress_adds_up(pool, appdata):
    client, add = pool
    add("w1", TORCH_THREADS="1"), add("w2", TORCH_THREADS="1")  # two workers on one host: a thread each
    sharded = submit(client, {**REQUEST, "shards": 2})
    seen = []
    while (st := client.get(f"/api/security_evaluations/{sharded}").get_json())["job-status"] not in ("finished", "failed"):
        seen.append((st["progress"]["done"], st["progress"]["total"]))
        time.sleep(0.05)
    assert st["job-status"] == "finished", st
    assert st["shards"]["count"] == 2 and st["shards"]["finished"] == 2
    whole = submit(client, {**REQUEST, "shards": 1})
    assert wait_status(client, whole, timeout=600)["job-status"] == "finished"
    out = assert_identical(client, appdata, sharded, whole)
    assert out["shards"]["count"] == 2 and out["shards"]["ranges"] == [[0, 64], [64, 120]]
    assert "wall-seconds" in out["timing"]
    # Durations add up over the shards; what is not a duration stays per shard (the worker's conversion cache).
    assert out["timing"]["total-seconds"] >= max(out["timing"]["shard-total-seconds"])
    assert out["timing"]["torch-threads"] == [1, 1]
    assert len(out["timing"]["conversion-cache"]) == 2 and set(out["timing"]["conversion-cache"]) <= {"hit", "miss"}
    # Progress: the sum over the shards, never going back, ending at every sample at every epsilon.
    dones = [d for d, _ in seen]
    assert dones == sorted(dones), seen
    assert st["progress"] == {"done": 120 * 4, "total": 120 * 4}
    assert {t for _, t in seen if t} <= {120 * 4}, seen  # fixed from the first shard's report on
    # The shards are part of their parent: not listed, not addressable.
    listed = client.get("/api/security_evaluations").get_json()["evaluations"]
    assert sorted(e["job_id"] for e in listed) == sorted([sharded, whole])
    child = shard_ids(client.application.config["SERVICE"].redis_url, sharded)[0]
    assert client.get(f"/api/security_evaluations/{child}").status_code == 404


def test_a_shard_whose_worker_is_killed_is_recovered_and_the_merge_is_unchanged(pool, appdata, redis_server):
    client, add = pool
    doomed = add("doomed")
    sharded = submit(client, {**SLOW, "shards": 2})
    conn = redis.Redis.from_url(redis_server.url)
    first, second = shard_ids(redis_server.url, sharded)
    # The only worker takes the first shard; once that shard checkpointed its largest epsilon, kill it.
    deadline = time.monotonic() + 300
    while int(conn.hget(f"secev:evaluation:{first}", "progress-done") or 0) < 2 * 64:
        assert time.monotonic() < deadline, "the first shard made no progress"
        time.sleep(0.1)
    horse = int(conn.get(f"secev:lease:{first}").decode().split(":")[1])
    kill_group(doomed, horse)  # SIGKILL: nothing runs its cleanup
    add("survivor")
    assert wait_status(client, sharded, timeout=900)["job-status"] == "finished"
    out = client.get(f"/api/security_evaluations/{sharded}/output").get_json()
    assert out["shards"]["attempts"][0] == 2 and out["resumed"] is True  # recovered from its checkpoint
    whole = submit(client, {**SLOW, "shards": 1})
    assert wait_status(client, whole, timeout=900)["job-status"] == "finished"
    assert_identical(client, appdata, sharded, whole, crashed=True)
    assert conn.exists(f"secev:lease:{first}", f"secev:lease:{second}") == 0


def test_deleting_a_sharded_evaluation_stops_every_shard_and_nothing_is_merged(pool, appdata, redis_server):
    client, add = pool
    workers = [add("c1"), add("c2")]
    sharded = submit(client, {**SLOW, "shards": 2})
    ids = shard_ids(redis_server.url, sharded)
    conn = redis.Redis.from_url(redis_server.url)
    deadline = time.monotonic() + 300
    while not all(conn.hget(f"secev:evaluation:{i}", "status") == b"started" for i in ids):
        assert time.monotonic() < deadline, "the shards did not both start"
        time.sleep(0.1)
    r = client.delete(f"/api/security_evaluations/{sharded}")
    assert r.status_code == 200 and r.get_json()["deleted"] is True
    from rq import Worker

    # Both workers go idle (their work-horses stopped) and no shard or merge record comes back.
    deadline = time.monotonic() + 60
    names = {f"{n}-{client.application.config['SERVICE'].queue_name}" for n in ("c1", "c2")}
    while any(w.get_current_job_id() for w in Worker.all(connection=conn) if w.name in names):
        assert time.monotonic() < deadline, "a shard kept running after the delete"
        time.sleep(0.2)
    time.sleep(3)  # a recovery sweep or a late merge would act by now
    for job_id in [sharded, *ids]:
        assert not conn.exists(f"secev:evaluation:{job_id}", f"secev:result:{job_id}", f"secev:lease:{job_id}")
        assert not (appdata / "evaluations" / job_id).exists()
    assert client.get(f"/api/security_evaluations/{sharded}").status_code == 404
    assert all(w.poll() is None for w in workers)


@pytest.mark.parametrize(
    "body, field",
    [
        ({"shards": "two"}, "shards"),
        ({"shards": 0}, "shards"),
        ({"shards": 99}, "shards"),
        ({"shards": 2.5}, "shards"),
        ({"shards": True}, "shards"),
        ({"shards": 2, "evaluation-mode": "fast"}, "shards"),
        ({"shard-size": 4}, "shard-size"),
        ({"shard-size": "big"}, "shard-size"),
    ],
)
def test_bad_shards_values_are_a_json_400_naming_the_field(client, body, field):
    r = client.post("/api/security_evaluations", json={"trained-model": "m.onnx", "dataset": "d.h5", **body})
    assert r.status_code == 400
    assert r.get_json()["details"]["field"] == field and field in r.get_json()["error"]


def test_shards_are_whole_blocks_and_auto_shards_only_complete_evaluations():
    from app import shards

    req = {"evaluation-mode": "complete", "shards": "auto", "shard-size": 32, "indexes": None}
    assert shards.plan(req, 120, 4) == [(0, 32), (32, 64), (64, 96), (96, 120)]
    assert shards.plan(req, 120, 2) == [(0, 64), (64, 120)]
    assert shards.plan({**req, "shards": 3}, 64, 4) == [(0, 32), (32, 64)]  # no more shards than blocks
    assert shards.plan(req, 32, 4) == [(0, 32)]  # one block: unsharded
    assert shards.plan({**req, "evaluation-mode": "fast"}, 100, 4) == [(0, 100)]
    assert shards.selection_size({**req, "evaluation-mode": "fast"}, 5000) == 100
    assert shards.selection_size({**req, "indexes": [1, 5, 9]}, 5000) == 3


@pytest.mark.parametrize("attack", ["pgd", "fmn"])
def test_a_sweep_over_shards_equals_the_sweep_over_the_whole_selection(assets, tmp_path, attack):
    """The engine alone: shards' per-sample arrays, concatenated, are bit-identical to one run's."""
    from app import schemas
    from app.engine.evaluation import evaluate

    body = {**REQUEST, "attack": attack, "attack-params": {"steps": 10}, "shards": 1}
    req = schemas.evaluation_request(body)
    whole = evaluate(req, assets.model, assets.dataset, work_dir=tmp_path / "whole")
    parts = []
    for i, (start, stop) in enumerate([(0, 32), (32, 96), (96, 120)]):
        shard = {**req, "shards": 3, "shard": {"index": i, "count": 3, "start": start, "stop": stop}}
        evaluate(shard, assets.model, assets.dataset, work_dir=tmp_path / f"s{i}")
        parts.append(samples(tmp_path / f"s{i}"))
    one = samples(tmp_path / "whole")
    assert whole["n-samples"] == 120
    for name in one:
        assert np.array_equal(np.concatenate([p[name] for p in parts]), one[name], equal_nan=True), name


def test_a_failed_shard_fails_its_parent_with_the_shards_error(settings, redis_server, appdata, assets):
    from app import create_app

    queue = f"short-shards-{uuid.uuid4().hex[:8]}"
    client = create_app({**settings, "job_timeout": 2, "queue_name": queue}).test_client()
    worker = start_worker(redis_server.url, appdata, name=f"w-{queue}", QUEUE_NAME=queue)
    try:
        sharded = submit(client, {**SLOW, "shards": 2})
        status = wait_status(client, sharded, timeout=120)
        assert status["job-status"] == "failed", status
        assert status["error"].startswith("shard ") and "job timeout (2 s" in status["error"], status["error"]
        assert client.get(f"/api/security_evaluations/{sharded}/output").status_code == 303  # no output
        assert not redis.Redis.from_url(redis_server.url).exists(f"secev:result:{sharded}")
    finally:
        stop_process(worker)
