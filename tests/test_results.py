"""Results people read (issue 9): CSV, plots, the HTML report, comparison plots, the attacks'
catalogue and bulk delete, through the live service with a real worker."""

from __future__ import annotations

import csv
import io
import json
import re
import shutil
import time
import xml.etree.ElementTree as ET

import redis
from markupsafe import escape
from PIL import Image

from conftest import queue_client, submit, wait_status

EPS = [0.0, 0.05, 0.1, 0.2]
SMALL = {"preprocessing": {}, "perturbation-values": EPS, "indexes": list(range(40))}
BASE = "/api/security_evaluations"
# A named file whose name would break HTML and matplotlib's mathtext if either took it literally.
HOSTILE = "files/<b>&$x^$'q\".onnx"


def run(client, **fields) -> tuple[str, dict]:
    """Submit a small evaluation of the test CNN, wait for it, return its id and output."""
    job_id = submit(client, {"trained-model": "files/cnn.onnx", "dataset": "files/val.h5", **SMALL, **fields})
    assert wait_status(client, job_id)["job-status"] == "finished"
    return job_id, client.get(f"{BASE}/{job_id}/output").get_json()


def replace_output(settings: dict, job_id: str, output: dict) -> None:
    """Overwrite a finished job's stored output (outputs are write-once for workers; a test may rewrite one)."""
    redis.Redis.from_url(settings["redis_url"]).set(f"secev:result:{job_id}", json.dumps(output))


def png(data: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(data))
    image.load()
    assert image.format == "PNG" and 400 <= image.width <= 2000 and 250 <= image.height <= 1500, image.size
    return image


def assert_self_contained(html: str) -> None:
    """No script, no resource from anywhere: every src is a data: URI, and no href leads to another host."""
    assert "<script" not in html.lower()
    sources = re.findall(r"""\bsrc\s*=\s*["']?([^"'\s>]+)""", html, re.I)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources), sources[:3]
    assert not re.search(r"""\b(href|src|action)\s*=\s*["']?\s*(https?:)?//""", html, re.I)
    assert "url(" not in html and "@import" not in html


def with_figures(output: dict) -> dict:
    """The output with figures and checks built here from the real curve, so that a check can warn with
    markup in its message (escaping) and two samples can be laid out exactly (one misclassified clean);
    the real figures, checks and samples are asserted in ``test_csv_plots_and_report_of_a_finished_evaluation``."""
    ys, n = output["sec-curve"]["y-values"], output["n-samples"]
    per = [
        {
            "epsilon": x,
            "epsilon-absolute": a,
            "n": n,
            "accuracy": y,
            "accuracy-ci95": [max(0.0, y - 0.1), min(1.0, y + 0.1)],
            "attack-success-rate": None if k == 0 else round(1 - y / ys[0], 4),
            "attack-success-rate-ci95": [None, None] if k == 0 else [0.01, 0.99],
            "mean-true-confidence": round(0.9 * y, 4),
            "per-class-accuracy": [round(y * (0.5 + c / 20), 4) for c in range(10)],
        }
        for k, (x, y, a) in enumerate(zip(output["sec-curve"]["x-values"], ys, output["attack"]["epsilons-absolute"]))
    ]
    checks = [
        {"name": name, "status": "pass", "message": f"Everything is fine for {name}.", "value": None}
        for name in ("curve-never-rises", "no-weaker-than-fgsm", "falls-towards-chance", "input-gradients",
                     "logits-not-probabilities", "deterministic-forward", "loss-converged", "path-adversarial-kept")
    ]
    checks.append({"name": "gradient-free-attack", "status": "warn", "value": 3,
                   "message": "A random search broke 3 samples <that PGD did not> & may be masking gradients."})
    figures = {
        "classes": list(range(10)),
        "class-counts": [4] * 10,
        "mean-true-confidence-clean": 0.88,
        "per-epsilon": per,
        "breaking-perturbation": {"source": "epsilon-grid", "norm": "linf", "unit": "fraction of the input range",
                                  "count": 30, "median": 0.05, "q1": 0.05, "q3": 0.1},
    }
    return {**output, "figures": figures, "checks": checks, "reliable": False}


def write_inspection(job_dir, n_eps: int) -> None:
    """inspection/index.json and its PNGs in H2's format (common.md), for two samples."""
    samples = []
    for i in range(2):
        folder = job_dir / "inspection" / str(i)
        folder.mkdir(parents=True, exist_ok=True)
        names = ["clean", "attribution-clean"]
        names += [f"{kind}-{k}" for k in range(1, n_eps) for kind in ("adversarial", "difference", "attribution-adversarial")]
        for j, name in enumerate(names):
            buffer = io.BytesIO()
            Image.new("RGB", (8, 8), (30 * j % 255, 100, 50 * i)).save(buffer, format="PNG")
            (folder / f"{name}.png").write_bytes(buffer.getvalue())
        epsilons = [
            {"epsilon": e, "epsilon-absolute": e, "adversarial": k >= 2, "prediction": 7 if k >= 2 else 3, "confidence": 0.8,
             "true-confidence": 0.1, "norm": e, "trace": None}
            for k, e in enumerate(EPS)
        ]
        clean = {"prediction": 3 if i == 0 else 4, "confidence": 0.97, "true-confidence": 0.97}  # sample 1: wrong when clean
        samples.append({"sample": i, "position": i, "index": 10 + i, "label": 3, "clean": clean, "epsilons": epsilons})
    (job_dir / "inspection" / "index.json").write_text(json.dumps({"samples": samples}))


def test_csv_plots_and_report_of_a_finished_evaluation(client, worker, assets, appdata):
    job_id, out = run(client)
    noise_id, _ = run(client, **{"perturbation-type": "random"})

    r = client.get(f"{BASE}/{job_id}/output/csv")
    assert r.status_code == 200 and r.mimetype == "text/csv"
    assert r.headers["Content-Disposition"] == f'attachment; filename="secev-{job_id}.csv"'
    table = list(csv.DictReader(io.StringIO(r.get_data(as_text=True))))
    assert [float(row["epsilon"]) for row in table] == out["sec-curve"]["x-values"] == EPS
    assert [float(row["accuracy"]) for row in table] == out["sec-curve"]["y-values"]
    assert [float(row["epsilon-absolute"]) for row in table] == out["attack"]["epsilons-absolute"]
    assert all(int(row["n"]) == 40 for row in table)
    per = out["figures"]["per-epsilon"]  # every per-epsilon figure of the real output is a column
    assert [float(row["accuracy-ci95-low"]) for row in table] == [p["accuracy-ci95"][0] for p in per]
    assert [float(row["mean-true-confidence"]) for row in table] == [p["mean-true-confidence"] for p in per]

    first = client.get(f"{BASE}/{job_id}/plot.png")
    assert first.status_code == 200 and first.mimetype == "image/png"
    png(first.data)
    cached = list((appdata / "evaluations" / job_id / "plots").glob("*.png"))
    assert len(cached) == 1 and cached[0].read_bytes() == first.data
    assert client.get(f"{BASE}/{job_id}/plot.png").data == first.data
    svg = client.get(f"{BASE}/{job_id}/plot.svg")
    assert svg.status_code == 200 and svg.mimetype == "image/svg+xml"
    assert ET.fromstring(svg.data).tag == "{http://www.w3.org/2000/svg}svg"
    assert b"<script" not in svg.data

    with_noise = client.get(f"{BASE}/{job_id}/plot.png?baseline={noise_id}")
    assert with_noise.status_code == 200 and with_noise.data != first.data
    png(with_noise.data)

    r = client.get(f"{BASE}/{job_id}/report?baseline={noise_id}")
    assert r.status_code == 200 and r.mimetype == "text/html"
    html = r.get_data(as_text=True)
    assert_self_contained(html)
    assert "default-src 'none'" in r.headers["Content-Security-Policy"]
    assert "cnn.onnx" in html and "val.h5" in html and f"evaluation {noise_id}" in html
    assert f"Clean accuracy is {100 * out['clean-accuracy']:.1f}%" in html
    assert f"{out['sec-value']:.3f}" in html
    # The real checks, the per-class table and the inspected samples' grid, from the worker's own files.
    assert len(out["checks"]) == 9 and all(str(escape(c["message"])) in html for c in out["checks"])
    assert ("not reliable" in html) != out["reliable"] and "Accuracy per class" in html
    assert out["inspection"]["count"] == 8 and html.count('alt="adversarial"') == 8
    assert "Not in this evaluation" not in html


def test_report_shows_figures_checks_classes_and_samples_and_escapes_names(client, worker, assets, settings, appdata):
    shutil.copy(assets.model, appdata / HOSTILE)
    job_id, out = run(client, **{"trained-model": HOSTILE})
    full = with_figures(out)
    replace_output(settings, job_id, full)
    write_inspection(appdata / "evaluations" / job_id, len(EPS))

    r = client.get(f"{BASE}/{job_id}/report")
    assert r.status_code == 200
    html = r.get_data(as_text=True)
    assert_self_contained(html)
    # The hostile name is text, never markup; the check's message too.
    assert "<b>&" not in html and "&lt;b&gt;&amp;$x^$" in html
    assert "&lt;that PGD did not&gt; &amp; may be masking" in html
    assert "not reliable" in html and "1 of 9 checks warn" in html
    assert html.count('class="verdict pass"') >= 8 and "Gradient-free attack" in html
    assert "Accuracy per class" in html and "median of 0.05" in html
    assert "attack success rate" in html
    # Two samples, five images each, as data: URIs: the sample is shown at the first epsilon that broke it.
    assert html.count('alt="adversarial"') == 2 and html.count("data:image/png;base64,") == 1 + 2 * 5
    assert "dataset index 10" in html and "epsilon 0.1" in html and "predicted 7" in html
    assert html.count("misclassified before the attack") == 1 and html.count('class="verdict warn">broken') == 1
    assert "Not in this evaluation" not in html

    table = list(csv.DictReader(io.StringIO(client.get(f"{BASE}/{job_id}/output/csv").get_data(as_text=True))))
    per = full["figures"]["per-epsilon"]
    assert [float(row["accuracy-ci95-high"]) for row in table] == [p["accuracy-ci95"][1] for p in per]
    assert table[0]["attack-success-rate"] == "" and float(table[1]["attack-success-rate"]) == per[1]["attack-success-rate"]
    assert [float(row["accuracy-class-9"]) for row in table] == [p["per-class-accuracy"][9] for p in per]
    # The plot draws the hostile name as plain text ('$' is no mathtext).
    png(client.get(f"{BASE}/{job_id}/plot.png").data)


def test_an_output_from_before_figures_still_gets_csv_plot_and_report(client, worker, settings, appdata):
    job_id, out = run(client)
    old = {k: v for k, v in out.items() if k not in ("figures", "checks", "reliable", "inspection")}
    replace_output(settings, job_id, old)
    shutil.rmtree(appdata / "evaluations" / job_id / "inspection")  # jobs before issue 9 wrote none
    rows = list(csv.reader(io.StringIO(client.get(f"{BASE}/{job_id}/output/csv").get_data(as_text=True))))
    assert rows[0] == ["epsilon", "epsilon-absolute", "n", "accuracy"] and len(rows) == 1 + len(EPS)
    png(client.get(f"{BASE}/{job_id}/plot.png").data)
    html = client.get(f"{BASE}/{job_id}/report").get_data(as_text=True)
    assert_self_contained(html)
    assert "reliability not checked" in html and "predates them" in html and "(estimated)" in html
    assert "none were stored for this evaluation" in html


def test_comparison_plot_and_its_errors(client, worker, settings):
    a, _ = run(client)
    b, _ = run(client, attack="fgsm")
    r = client.get(f"/api/plots?jobs={a},{b}")
    assert r.status_code == 200 and r.mimetype == "image/png"
    png(r.data)
    assert client.get(f"/api/plots?jobs={a}, {b},{a}&format=svg").mimetype == "image/svg+xml"
    nobody = queue_client(settings, "results-nobody")  # a queue no worker serves: the job stays queued
    queued = submit(nobody, {"trained-model": "files/cnn.onnx", "dataset": "files/val.h5", **SMALL})
    unknown = "00000000-0000-4000-8000-000000000000"
    cases = [
        ("/api/plots", 400, "jobs: required"),
        ("/api/plots?jobs=", 400, "jobs: required"),
        ("/api/plots?jobs=" + ",".join([a] * 3 + [unknown[:-1] + str(i) for i in range(8)]), 400, "at most 8"),
        (f"/api/plots?jobs={a},../../etc", 400, "is not an evaluation id"),
        (f"/api/plots?jobs={a}&format=jpg", 400, "format: must be one of"),
        (f"/api/plots?jobs={a},{unknown}", 404, "no security evaluation"),
        (f"/api/plots?jobs={a},{queued}", 409, "is queued"),
        (f"{BASE}/{queued}/output/csv", 409, "is queued"),
        (f"{BASE}/{queued}/report", 409, "is queued"),
        (f"{BASE}/{unknown}/plot.png", 404, "no security evaluation"),
        (f"{BASE}/{a}/plot.gif", 404, "plot.png or plot.svg"),
        (f"{BASE}/{a}/plot.png?baseline=xyz", 400, "baseline: expected"),
        (f"{BASE}/{a}/plot.png?baseline={b}", 400, "not a random-noise evaluation"),
        (f"{BASE}/{a}/report?baseline={unknown}", 404, "no security evaluation"),
    ]
    for url, status, phrase in cases:
        r = client.get(url)
        assert r.status_code == status and r.is_json and phrase in r.get_json()["error"], (url, r.status_code, r.get_data()[:300])


KEYS = {"key-alice": "alice", "key-bob": "bob"}
ALICE, BOB = {"X-API-Key": "key-alice"}, {"X-API-Key": "key-bob"}


def test_bulk_delete_removes_only_the_callers_jobs_in_those_statuses(settings, worker, assets):
    from app import create_app

    for tenant in ("alice", "bob"):
        (assets.dir / tenant).mkdir(exist_ok=True)
        for path in (assets.model, assets.dataset):
            shutil.copy(path, assets.dir / tenant / path.name)
    served = create_app({**settings, "api_keys": KEYS}).test_client()  # the test worker runs these
    idle = create_app({**settings, "api_keys": KEYS, "queue_name": "results-idle"}).test_client()  # nobody runs these

    def post(client, who: str, headers: dict, **fields) -> str:
        files = {"trained-model": f"files/{who}/cnn.onnx", "dataset": f"files/{who}/val.h5"}
        r = client.post(BASE, headers=headers, json={**files, **SMALL, **fields})
        assert r.status_code == 202, r.get_json()
        return r.get_json()["job_id"]

    def status(headers: dict, job_id: str) -> dict:
        deadline = time.monotonic() + 120
        while (view := served.get(f"{BASE}/{job_id}", headers=headers).get_json())["job-status"] in ("queued", "started"):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        return view

    alice_done = [post(served, "alice", ALICE) for _ in range(2)]
    bob_done = post(served, "bob", BOB)
    alice_queued = post(idle, "alice", ALICE)
    bob_queued = post(idle, "bob", BOB)
    assert all(status(ALICE, j)["job-status"] == "finished" for j in alice_done)
    assert status(BOB, bob_done)["job-status"] == "finished"

    r = served.delete(f"{BASE}?status=finished", headers=ALICE)
    assert r.status_code == 200, r.get_json()
    body = r.get_json()
    assert body["deleted"] == 2 and sorted(body["ids"]) == sorted(alice_done) and body["more"] is False
    for job_id in alice_done:
        assert served.get(f"{BASE}/{job_id}", headers=ALICE).status_code == 404
    assert served.get(f"{BASE}/{bob_done}", headers=BOB).get_json()["job-status"] == "finished"  # another tenant's remain
    assert served.get(f"{BASE}/{alice_queued}", headers=ALICE).get_json()["job-status"] == "queued"  # another status too

    # Queued jobs are canceled as a single delete does: gone from the record and from the queue.
    r = idle.delete(f"{BASE}?status=queued,failed", headers=ALICE)
    assert r.get_json()["ids"] == [alice_queued] and r.get_json()["evaluations"][0]["was"] == "queued"
    queue = idle.application.extensions["secev"]["queue"]
    assert queue.job_ids == [bob_queued]
    assert served.get(f"{BASE}/{bob_queued}", headers=BOB).get_json()["job-status"] == "queued"

    # A running job is stopped as a single delete stops it: the worker is free for the next job.
    running = post(served, "alice", ALICE, **{"attack-params": {"steps": 5000}})
    deadline = time.monotonic() + 60
    while served.get(f"{BASE}/{running}", headers=ALICE).get_json()["job-status"] != "started":
        assert time.monotonic() < deadline
        time.sleep(0.1)
    r = served.delete(f"{BASE}?status=started", headers=ALICE)
    assert r.get_json()["evaluations"] == [{"job_id": running, "was": "started"}]
    assert served.get(f"{BASE}/{running}", headers=ALICE).status_code == 404
    assert status(BOB, post(served, "bob", BOB))["job-status"] == "finished"

    for url, headers, code, phrase in [
        (BASE, ALICE, 400, "status: required"),
        (f"{BASE}?status=", ALICE, 400, "status: required"),
        (f"{BASE}?status=finished,bogus", ALICE, 400, "unknown status 'bogus'"),
        (f"{BASE}?status=finished", {}, 401, "API key"),
    ]:
        r = served.delete(url, headers=headers)
        assert r.status_code == code and phrase in r.get_json()["error"], (url, r.get_json())


def test_plots_and_report_through_gunicorn(redis_server, appdata, worker, assets):
    """Under the real server the plot is drawn by the API process's plotting child; other requests go on meanwhile."""
    import threading
    import urllib.request

    from app.client import Client
    from app.redis_server import free_port
    from conftest import start_api, stop_process

    port = free_port()
    api = start_api(redis_server.url, appdata, port, WEB_CONCURRENCY="1")
    try:
        client = Client(f"http://127.0.0.1:{port}")
        body = {"trained-model": "files/cnn.onnx", "dataset": "files/val.h5", **SMALL}
        job_id = client.submit(body)["job_id"]
        client.wait(job_id, timeout=120)
        got: dict = {}

        def fetch(name: str, path: str) -> None:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=60) as resp:
                got[name] = (resp.status, resp.headers.get_content_type(), resp.read())

        plot = threading.Thread(target=fetch, args=("plot", f"{BASE}/{job_id}/plot.svg"))
        plot.start()
        fetch("health", "/api/health")  # one gunicorn process: the plot does not hold its other threads
        plot.join(90)
        assert got["health"][0] == 200 and got["plot"][:2] == (200, "image/svg+xml")
        fetch("report", f"{BASE}/{job_id}/report")
        assert got["report"][:2] == (200, "text/html")
        assert_self_contained(got["report"][2].decode())
    finally:
        stop_process(api)
