"""The remote command line as a user types it: ``python -m app ...`` in a subprocess, against real
gunicorn, a real worker and Redis; and riding out a real Redis outage on the API's 503 + Retry-After."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

from test_service import custom_op_model

from app.client import Client, JobFailed
from app.redis_server import RedisServer, free_port
from conftest import ROOT, start_api, stop_process

ROW = re.compile(r"^\s*([0-9.]+)\s+([0-9.]+)\s*$")


def cli(*args: str, url: str, cwd, **popen) -> subprocess.CompletedProcess:
    """``python -m app <args>`` in ``cwd``, the server named by $SECEV_URL as README says."""
    env = {**os.environ, "SECEV_URL": url, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "app", *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def test_submit_wait_results_list_delete_against_a_live_server(live_api, assets, tmp_path):
    run = lambda *args: cli(*args, url=live_api, cwd=tmp_path)  # noqa: E731
    # A cheap job (FGSM, 20 samples): the reliability checks' probes cost most of it anyway.
    request = [
        "--perturbation-values",
        "0,0.05,0.1",
        "--preprocessing",
        "{}",
        "--attack",
        "fgsm",
        "--indexes",
        ",".join(map(str, range(20))),
    ]
    submitted = run("submit", "--trained-model", str(assets.model), "--dataset", str(assets.dataset), *request)
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    assert re.fullmatch(r"[0-9a-f-]{36}", job_id), submitted.stdout
    assert "uploading" in submitted.stderr and "model" in submitted.stderr and "ready" in submitted.stderr

    waited = run("wait", job_id)
    assert waited.returncode == 0, waited.stderr
    assert "sample-eps" in waited.stderr and "finished" in waited.stderr  # the progress bar, fed by the job's progress
    output = Client(live_api).output(job_id)
    rows = [tuple(map(float, m.groups())) for line in waited.stdout.splitlines() if (m := ROW.match(line))]
    curve = output["sec-curve"]
    assert rows == [(round(x, 3), round(y, 3)) for x, y in zip(curve["x-values"], curve["y-values"])]
    assert f"sec-value {output['sec-value']:.3f}" in waited.stdout

    shown = run("results", job_id, "--json")
    assert shown.returncode == 0 and json.loads(shown.stdout) == output
    csv = run("wait", job_id, "--csv")
    assert csv.returncode == 0 and csv.stdout.splitlines() == Client(live_api).csv(job_id).splitlines()
    assert len(csv.stdout.splitlines()) == 4 and csv.stdout.startswith("epsilon,")  # a header and one row per epsilon
    # --url wins over $SECEV_URL (pointed here at a port where nothing listens).
    status = cli("status", job_id, "--url", live_api, url=f"http://127.0.0.1:{free_port()}", cwd=tmp_path)
    assert status.returncode == 0 and json.loads(status.stdout)["job-status"] == "finished"
    assert job_id in run("list", "--status", "finished").stdout
    assert job_id not in run("list", "--status", "queued").stdout
    models = run("list", "models").stdout
    assert "ready" in models and assets.model.name in models

    deleted = run("delete", job_id)
    assert deleted.returncode == 0 and deleted.stdout.strip() == f"deleted {job_id} (was finished)"
    gone = run("status", job_id)
    assert gone.returncode == 2 and f"HTTP 404: no security evaluation with id '{job_id}'" in gone.stderr


def test_failed_job_exits_1_and_an_api_error_exits_2_with_its_message(live_api, appdata, assets, tmp_path):
    run = lambda *args: cli(*args, url=live_api, cwd=tmp_path)  # noqa: E731
    custom_op_model(appdata / "files" / "custom.onnx")
    failed = run(
        "submit",
        "--trained-model",
        "files/custom.onnx",
        "--dataset",
        "files/val.h5",
        "--perturbation-values",
        "0",
        "--preprocessing",
        "{}",
        "--wait",
    )
    assert failed.returncode == 1, failed.stderr
    assert "failed: the model is unsupported: the operator Frobnicate" in failed.stderr
    job_id = re.search(r"submitted (\S+)", failed.stderr)[1]
    try:
        Client(live_api).wait(job_id)
        raise AssertionError("a failed job must raise")
    except JobFailed as exc:
        assert exc.record["job-status"] == "failed" and "Frobnicate" in exc.record["error"]

    refused = run("submit", "--trained-model", "files/absent.onnx", "--dataset", "files/val.h5")
    assert refused.returncode == 2 and "HTTP 400: trained-model:" in refused.stderr, refused.stderr
    assert run("wait").returncode == 2  # usage: no job id
    bogus = run("list", "--status", "bogus")
    assert bogus.returncode == 2 and "HTTP 400: status: must be one of" in bogus.stderr, bogus.stderr
    # The remote commands need no torch: they run where only the API's requirements are installed.
    code = "import sys; from app.cli import main; rc = main(['list']); print(rc, 'torch' in sys.modules)"
    env = {**os.environ, "SECEV_URL": live_api, "PYTHONPATH": str(ROOT)}
    probe = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert probe.stdout.split()[-2:] == ["0", "False"], probe.stdout + probe.stderr


def test_a_redis_outage_is_ridden_out_by_honouring_retry_after(tmp_path, assets):
    """Redis stops; the API answers 503 + Retry-After: 5; the CLI waits, Redis is back, the command succeeds."""
    redis_server = RedisServer(tmp_path / "redis").start()
    port = free_port()
    api = start_api(redis_server.url, tmp_path / "appdata", port)
    url = f"http://127.0.0.1:{port}"
    try:
        dataset = Client(url).upload("datasets", assets.dataset)  # stored inline: no worker needed
        redis_server.stop()
        env = {**os.environ, "SECEV_URL": url, "PYTHONPATH": str(ROOT)}
        proc = subprocess.Popen(
            [sys.executable, "-m", "app", "list", "datasets"],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for notice in iter(proc.stderr.readline, ""):  # up to the client's first retry notice: the 503 was seen
            if "retrying" in notice:
                break
        redis_server.start()  # same port, same append-only file
        out, err = proc.communicate(timeout=120)
        assert "HTTP 503; retrying in 5.0 s" in notice, notice + err
        assert proc.returncode == 0, err
        assert dataset["id"] in out
    finally:
        stop_process(api)
        redis_server.stop()
