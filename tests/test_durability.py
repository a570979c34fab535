"""Durability with real processes: gunicorn, an RQ worker and Redis, all restarted."""

from __future__ import annotations

import pytest

from app.client import ApiError, Client
from app.redis_server import RedisServer, free_port
from conftest import start_api, start_worker, stop_process


@pytest.fixture
def stack(tmp_path, assets):
    """Its own Redis, data directory, gunicorn and worker, so restarting them disturbs no other test."""
    appdata = tmp_path / "appdata"
    appdata.mkdir()
    redis_server = RedisServer(tmp_path / "redis").start()
    port = free_port()
    procs = {"api": start_api(redis_server.url, appdata, port)}
    yield redis_server, appdata, port, procs
    for proc in procs.values():
        stop_process(proc)
    redis_server.stop()


def test_finished_curve_and_queued_job_survive_restart_of_everything(stack, assets):
    redis_server, appdata, port, procs = stack
    client = Client(f"http://127.0.0.1:{port}", retries=0)  # the 503s themselves are asserted
    procs["worker"] = start_worker(redis_server.url, appdata)
    model = client.upload("models", assets.model)
    dataset = client.upload("datasets", assets.dataset)
    body = {"trained-model": model["id"], "dataset": dataset["id"], "preprocessing": {}, "perturbation-values": [0, 0.05, 0.1]}
    done = client.submit(body)["job_id"]
    output = client.wait(done, timeout=120)
    stop_process(procs.pop("worker"))
    queued = client.submit(body)["job_id"]  # no worker now: it stays queued

    stop_process(procs.pop("api"))
    redis_server.stop()
    procs["api"] = start_api(redis_server.url, appdata, port)
    with pytest.raises(ApiError) as down:
        client.status(done)
    assert down.value.status == 503 and "Redis" in down.value.body["error"]
    with pytest.raises(ApiError) as health:
        client.health()
    assert health.value.status == 503

    redis_server.start()  # same port, same append-only file
    assert client.health()["redis"] is True  # the API recovered by itself
    assert client.output(done) == output
    assert client.status(queued)["job-status"] == "queued"
    assert [m["id"] for m in client.json("GET", "/api/models")["models"]] == [model["id"]]

    procs["worker"] = start_worker(redis_server.url, appdata)
    assert client.wait(queued, timeout=120)["sec-curve"] == output["sec-curve"]
