"""Attack plugins end to end: the example package (examples/secev-attack-example) installed into a
folder of the test's own (never into the shared virtualenv), a real worker started with that folder
on its PYTHONPATH, and everything else through the API: the listing, validation, a run, routing,
broken plugins rejected at the worker's start, and a plugin no live worker offers."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

import pytest
from prometheus_client.parser import text_string_to_metric_families

from app import plugin_catalog
from conftest import ROOT, queue_client, start_worker, stop_process, wait_status

QUEUE = "plugins-test"  # a queue of its own: the session's worker (no plugins) never takes these jobs
BODY = {
    "trained-model": "files/cnn.onnx",
    "dataset": "files/val.h5",
    "preprocessing": {},
    "perturbation-values": [0.05, 0.1, 0.2],
}

# A second package with three broken plugins: a built-in's name, an import error, and a bad parameter table.
BROKEN_INIT = '''
from app.attack_catalog import Attack as Entry, Param
from app.engine.attacks import FGSM

class Clash(FGSM):
    catalog = Entry("pgd", "clash", "max-norm", "", None, ())

class BadTable(FGSM):
    catalog = Entry("bad-table", "bad", "max-norm", "", None, (Param("steps", "integer", 0, "out of its own range", 1, 10),))
'''
BROKEN_PYPROJECT = """
[build-system]
requires = ["setuptools>=61"]
build-backend = "setuptools.build_meta"
[project]
name = "broken-plugins"
version = "0.0.1"
[project.entry-points."secev.attacks"]
pgd = "broken_plugins:Clash"
bad-table = "broken_plugins:BadTable"
no-module = "broken_plugins_missing:Attack"
[tool.setuptools]
packages = ["broken_plugins"]
"""


def pip_install_to(source, target) -> None:
    """``pip install --no-deps --target``: a folder of its own, so the shared .venv is never touched."""
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target), str(source)],
        check=True,
        capture_output=True,
    )


@pytest.fixture(scope="module")
def plugin_site(tmp_path_factory):
    root = tmp_path_factory.mktemp("plugins")
    example = root / "example"
    shutil.copytree(ROOT / "examples" / "secev-attack-example", example)  # pip's build files stay out of the repo
    broken = root / "broken"
    (broken / "broken_plugins").mkdir(parents=True)
    (broken / "pyproject.toml").write_text(textwrap.dedent(BROKEN_PYPROJECT))
    (broken / "broken_plugins" / "__init__.py").write_text(BROKEN_INIT)
    site = root / "site"
    for package in (example, broken):
        pip_install_to(package, site)
    return site


@pytest.fixture
def plugin_worker(redis_server, appdata, assets, plugin_site, tmp_path):
    log = tmp_path / "worker.log"
    with open(log, "wb") as err:
        proc = start_worker(
            redis_server.url, appdata, name="plugin-worker", stderr=err, QUEUE_NAME=QUEUE, PYTHONPATH=f"{ROOT}:{plugin_site}"
        )
    yield proc, log
    stop_process(proc)


def scrape(client) -> dict[tuple[str, str | None], float]:
    """``/metrics`` parsed as Prometheus does: (name, its ``attack`` label or None) -> value."""
    text = client.get("/metrics").get_data(as_text=True)
    return {(s.name, s.labels.get("attack")): s.value for family in text_string_to_metric_families(text) for s in family.samples}


def accuracy(client, body) -> list[float]:
    r = client.post("/api/security_evaluations", json=body)
    assert r.status_code == 202, r.get_json()
    done = wait_status(client, r.get_json()["job_id"], timeout=180)
    assert done["job-status"] == "finished", done
    out = client.get(f"/api/security_evaluations/{done['job_id']}/output").get_json()
    assert out["attack"]["name"] == body["attack"]
    return out["sec-curve"]["y-values"]


def test_example_plugin_through_the_api(settings, plugin_worker, redis_server):
    proc, log = plugin_worker
    client = queue_client(settings, QUEUE)
    listed = {a["name"]: a for a in client.get("/api/attacks").get_json()["attacks"]}
    mi = listed["mi-fgsm"]
    assert mi["plugin"] is True and mi["workers"] == 1 and listed["pgd"]["plugin"] is False
    assert [p["name"] for p in mi["parameters"]] == ["steps", "decay"] and mi["defaults"] == {"steps": 10, "decay": 1.0}
    assert mi["paper"]["venue"] == "CVPR 2018"
    assert "mi-fgsm" in [a["name"] for a in client.get("/api/attacks/max-norm").get_json()["attacks"]]
    # the OpenAPI document says what a submit accepts now: the offered plugin is in the attack's choices
    def documented_attacks() -> list[str]:
        doc = client.get("/api/openapi.json").get_json()
        body = doc["paths"]["/api/security_evaluations"]["post"]["requestBody"]["content"]["application/json"]["schema"]
        return body["properties"]["attack"]["enum"]

    assert "mi-fgsm" in documented_attacks() and "pgd" in documented_attacks()
    # The broken plugins were rejected with a reason in the worker's log; the worker lives and offers none of them.
    text = log.read_text()
    assert proc.poll() is None and not {"bad-table", "no-module"} & set(listed)
    assert "'pgd'" in text and "built-in" in text
    assert "'bad-table'" in text and "default is not valid" in text
    assert "'no-module'" in text and "import failed" in text

    # Parameters are checked against the published table with the built-ins' messages.
    bad = (({"decay": -1}, "attack-params.decay"), ({"steps": 0}, "attack-params.steps"), ({"mu": 1}, "attack-params"))
    for params, field in bad:
        r = client.post("/api/security_evaluations", json={**BODY, "attack": "mi-fgsm", "attack-params": params})
        assert r.status_code == 400 and r.get_json()["details"]["field"] == field, r.get_json()
    r = client.post("/api/security_evaluations", json={**BODY, "attack": "nope"})
    assert r.status_code == 400 and "mi-fgsm" in r.get_json()["error"]

    # It runs through the real worker (its own queue), and its curve is a real attack's.
    mi_curve = accuracy(client, {**BODY, "attack": "mi-fgsm", "attack-params": {"steps": 5, "decay": 1.0}})
    fgsm_curve = accuracy(client, {**BODY, "attack": "fgsm"})
    assert all(b <= a for a, b in zip(mi_curve, mi_curve[1:])) and mi_curve[-1] < mi_curve[0] - 0.3, mi_curve
    assert all(m <= f for m, f in zip(mi_curve, fgsm_curve)), (mi_curve, fgsm_curve)
    served = scrape(client)
    assert served[("secev_plugin_workers_live", "mi-fgsm")] == 1 and served[("secev_plugin_queue_length", "mi-fgsm")] == 0

    # The worker stops: its offer is withdrawn, and a request naming the plugin is refused, saying why.
    stop_process(proc)
    assert "mi-fgsm" not in {a["name"] for a in client.get("/api/attacks").get_json()["attacks"]}
    assert "mi-fgsm" not in documented_attacks()
    r = client.post("/api/security_evaluations", json={**BODY, "attack": "mi-fgsm"})
    assert r.status_code == 400 and "only while a live worker offers it" in r.get_json()["error"], r.get_json()


def test_plugin_jobs_are_routed_to_its_queue_and_wait_visibly_when_its_workers_vanish(app, client, assets, redis_server):
    """A worker offered the plugin when the jobs were accepted, then went away: its jobs (a plain one,
    and a sharded one's shards) sit in the plugin's queue, where no other worker takes them, even
    after recovery re-queues one; the merge stays on the main queue; the status says why it waits."""
    import redis

    from app import recovery
    from app.attack_catalog import Attack, Param

    r = redis.Redis.from_url(redis_server.url)
    entry = Attack("ghost-attack", "ghost", "max-norm", "", None, (Param("steps", "integer", 3, "", 1, 9),))
    plugin_catalog.publish(r, "secev", "ghost-worker", [entry])
    plain = client.post("/api/security_evaluations", json={**BODY, "attack": "ghost-attack"})
    sharded = client.post("/api/security_evaluations", json={**BODY, "attack": "ghost-attack", "shards": 2, "shard-size": 64})
    assert plain.status_code == 202 and sharded.status_code == 202, (plain.get_json(), sharded.get_json())
    job_id, parent_id = plain.get_json()["job_id"], sharded.get_json()["job_id"]
    ghost_queue = f"rq:queue:{plugin_catalog.plugin_queue('evaluations', 'ghost-attack')}"
    records, queue = app.extensions["secev"]["records"], app.extensions["secev"]["queue"]
    shard_ids = records.evaluation(parent_id)["shards"]["ids"]
    assert sorted(q.decode() for q in r.lrange(ghost_queue, 0, -1)) == sorted([job_id, *shard_ids])
    assert r.llen("rq:queue:evaluations") == 0  # the merge is deferred on the main queue, not on it

    # Re-queued after a (simulated) lost queue entry: back on the plugin's queue, not the main one.
    recovery.requeue(records, queue, job_id, "test", 60)
    assert job_id in {q.decode() for q in r.lrange(ghost_queue, 0, -1)} and r.llen("rq:queue:evaluations") == 0

    plugin_catalog.withdraw(r, "secev", "ghost-worker")
    st = client.get(f"/api/security_evaluations/{job_id}").get_json()
    assert st["job-status"] == "queued" and "no live worker offers the plugin attack 'ghost-attack'" in st["waiting"]
    # What an operator's alert watches: jobs waiting on a plugin queue that no worker serves.
    scraped = scrape(client)
    assert scraped[("secev_plugin_queue_length", "ghost-attack")] == 1 + len(shard_ids)
    assert scraped[("secev_plugin_workers_live", "ghost-attack")] == 0
    assert scraped[("secev_queue_length", None)] == 0  # the main queue's own count, as before
    for evaluation in (job_id, parent_id):
        assert client.delete(f"/api/security_evaluations/{evaluation}").status_code == 200
