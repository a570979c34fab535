"""POST /api/adversarial_examples end to end through a real worker: the job, its per-epsilon
predictions and norms, its PNGs, its place among the evaluations, hostile bodies and names, tenants."""

from __future__ import annotations

import io
import shutil
import time

import numpy as np
import pytest
from PIL import Image

EXAMPLE = {
    "trained-model": "files/cnn.onnx",
    "dataset": "files/val.h5",
    "index": 5,
    "perturbation-values": [0.05, 0.2],
    "preprocessing": {},
    "attack-params": {"steps": 20},
}


def wait(client, job: str, headers=None, timeout: float = 300) -> dict:
    deadline = time.monotonic() + timeout
    while (view := client.get(f"/api/adversarial_examples/{job}", headers=headers or {}).get_json())["job-status"] not in (
        "finished",
        "failed",
    ):
        assert time.monotonic() < deadline, view
        time.sleep(0.1)
    return view


def create(client, body: dict, headers=None) -> str:
    r = client.post("/api/adversarial_examples", json=body, headers=headers or {})
    assert r.status_code == 202, r.get_json()
    assert r.headers["Location"].endswith(f"/api/adversarial_examples/{r.get_json()['job_id']}")
    return r.get_json()["job_id"]


def image(client, url: str, headers=None) -> np.ndarray:
    r = client.get(url.replace("http://localhost", ""), headers=headers or {})
    assert r.status_code == 200 and r.mimetype == "image/png", (url, r.status_code)
    return np.asarray(Image.open(io.BytesIO(r.data)))


def test_adversarial_example_end_to_end(client, worker, assets):
    job = create(client, EXAMPLE)
    view = wait(client, job)
    assert view["job-status"] == "finished", view
    assert view["kind"] == "adversarial-example" and view["request"]["index"] == 5
    out = view["output"]
    assert out["index"] == 5 and out["label"] == int(assets.y[5])
    assert [e["epsilon"] for e in out["epsilons"]] == [0.0, 0.05, 0.2]
    clean = image(client, out["links"]["clean"])
    assert clean.shape == (128, 128) and np.array_equal(clean[::16, ::16], np.round(assets.x[5, 0] * 255).astype(np.uint8))
    for k, e in enumerate(out["epsilons"]):
        assert {"prediction", "confidence", "true-confidence", "norm", "adversarial", "images"} <= set(e)
        assert 0 <= e["true-confidence"] <= 1 and 0 < e["confidence"] <= 1 and e["norm"] <= e["epsilon-absolute"] + 1e-6
        assert e["adversarial"] == (e["prediction"] != out["label"]) or e["trace"]["returned-adversarial"]
        if k:
            adv, diff = image(client, e["images"]["adversarial"]), image(client, e["images"]["difference"])
            assert image(client, e["images"]["attribution"]).shape == (128, 128, 3)
            assert np.array_equal(adv, clean) == (e["norm"] == 0) and ((diff == 128).all() == (e["norm"] == 0))
    assert out["epsilons"][-1]["adversarial"], "0.2 of the range breaks this digit: the example shows an attack"

    # The same job is an evaluation of that one sample, listed with its kind.
    listed = client.get("/api/security_evaluations").get_json()["evaluations"]
    assert [(e["job_id"], e["kind"]) for e in listed] == [(job, "adversarial-example")]
    evaluation = client.get(f"/api/security_evaluations/{job}/output").get_json()
    assert evaluation["n-samples"] == 1 and evaluation["inspection"]["samples"][0]["index"] == 5
    curve = evaluation["sec-curve"]["y-values"]
    assert [e["adversarial"] for e in out["epsilons"]] == [y == 0 for y in curve], "the example agrees with its curve"

    # Names are checked; delete removes it.
    for path in ("clean.PNG", "adversarial-0.png", "..%2Fsamples.npz.png", "x" * 200 + ".png", "adversarial-3.png"):
        r = client.get(f"/api/adversarial_examples/{job}/{path}")
        assert r.status_code == 404 and r.is_json, path
    assert client.delete(f"/api/adversarial_examples/{job}").status_code == 200
    assert client.get(f"/api/adversarial_examples/{job}").status_code == 404


def test_an_evaluation_is_not_an_example(client, worker, assets):
    body = {k: v for k, v in EXAMPLE.items() if k != "index"} | {"indexes": [0], "attack": "fgsm", "attack-params": {}}
    r = client.post("/api/security_evaluations", json=body)
    assert r.status_code == 202
    job = r.get_json()["job_id"]
    assert client.get(f"/api/security_evaluations/{job}").get_json()["kind"] == "security-evaluation"
    for path in (job, f"{job}/clean.png"):
        r = client.get(f"/api/adversarial_examples/{path}")
        assert r.status_code == 404 and r.is_json
    assert client.delete(f"/api/adversarial_examples/{job}").status_code == 404
    assert client.get(f"/api/security_evaluations/{job}").status_code == 200, "left alone"


@pytest.mark.parametrize(
    "change, field",
    [
        ({"index": 120}, "index"),  # the dataset has 120 samples
        ({"index": -1}, "index"),
        ({"index": "5"}, "index"),
        ({"index": None}, "index"),
        ({"indexes": [1, 2]}, "indexes"),
        ({"inspect-samples": 4}, "inspect-samples"),
        ({"perturbation-values": [2]}, "perturbation-values"),
        ({"attack": "magic"}, "attack"),
        ({"trained-model": "../../etc/passwd"}, "trained-model"),
    ],
)
def test_hostile_example_bodies_get_400_naming_the_field(client, assets, change, field):
    body = {**EXAMPLE, **change}
    if change.get("index", 0) is None:
        del body["index"]
    r = client.post("/api/adversarial_examples", json=body)
    assert r.status_code == 400 and r.get_json()["details"]["field"] == field, r.get_json()


def test_another_tenants_example_is_404(settings, worker, assets):
    from app import create_app

    alice, bob = {"X-API-Key": "key-alice"}, {"X-API-Key": "key-bob"}
    folder = assets.dir / "alice"
    folder.mkdir(exist_ok=True)
    for name in ("cnn.onnx", "val.h5"):
        shutil.copyfile(assets.dir / name, folder / name)
    client = create_app({**settings, "api_keys": {"key-alice": "alice", "key-bob": "bob"}}).test_client()
    body = {
        **EXAMPLE,
        "trained-model": "files/alice/cnn.onnx",
        "dataset": "files/alice/val.h5",
        "attack": "fgsm",
        "attack-params": {},
    }
    job = create(client, body, alice)
    assert wait(client, job, alice)["job-status"] == "finished"
    assert client.get(f"/api/adversarial_examples/{job}/clean.png", headers=alice).status_code == 200
    for path in (job, f"{job}/clean.png"):
        r = client.get(f"/api/adversarial_examples/{path}", headers=bob)
        assert r.status_code == 404 and r.is_json, path
    assert client.delete(f"/api/adversarial_examples/{job}", headers=bob).status_code == 404
    assert client.get(f"/api/adversarial_examples/{job}", headers=alice).status_code == 200
