"""Per-sample inspection through the service and a real worker: the samples' index, their PNGs
(decoded), the attack traces, agreement with the curve, layouts, shards, hostile names, tenants."""

from __future__ import annotations

import io
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from app.engine.assets import export_onnx
from conftest import submit, wait_status

EPS = [0.0, 0.05, 0.1, 0.2]
STEPS = 20
BODY = {
    "trained-model": "files/cnn.onnx",
    "dataset": "files/val.h5",
    "preprocessing": {},
    "perturbation-values": EPS,
    "attack-params": {"steps": STEPS},
    "indexes": list(range(40)),
    "inspect-samples": 6,
}


def finished(client, body: dict, headers=None) -> tuple[str, dict]:
    r = client.post("/api/security_evaluations", json=body, headers=headers or {})
    assert r.status_code == 202, r.get_json()
    job = r.get_json()["job_id"]
    deadline_status = wait_status(_Headed(client, headers), job, timeout=300)
    assert deadline_status["job-status"] == "finished", deadline_status
    return job, client.get(f"/api/security_evaluations/{job}/output", headers=headers or {}).get_json()


class _Headed:
    """A test client sending ``headers`` on every GET (for ``wait_status`` with API keys)."""

    def __init__(self, client, headers) -> None:
        self.client, self.headers = client, headers or {}

    def get(self, url: str):
        return self.client.get(url, headers=self.headers)


def png(client, url: str, headers=None) -> np.ndarray:
    r = client.get(url.replace("http://localhost", ""), headers=headers or {})
    assert r.status_code == 200 and r.mimetype == "image/png", (url, r.status_code, r.data[:200])
    return np.asarray(Image.open(io.BytesIO(r.data)))


def broken_at(appdata, job: str) -> np.ndarray:
    with np.load(appdata / "evaluations" / job / "samples.npz", allow_pickle=False) as f:
        return f["broken_at"]


def assert_agrees_with_the_curve(index: dict, broken: np.ndarray, eps_abs: list[float]) -> None:
    """``adversarial`` is the curve's verdict; the point shown is adversarial exactly then (or the
    re-run found one the sweep did not count, which its trace says); traces stay inside the ball."""
    for s in index["samples"]:
        b = int(broken[s["position"]])
        assert [e["adversarial"] for e in s["epsilons"]] == [b <= k for k in range(len(eps_abs))], (s["sample"], b)
        for k, e in enumerate(s["epsilons"]):
            assert e["norm"] <= eps_abs[k] * (1 + 1e-5) + 1e-6
            if e["adversarial"]:
                assert e["prediction"] != s["label"], (s["sample"], k)
            elif e["prediction"] != s["label"]:
                assert e["trace"]["returned-adversarial"], (s["sample"], k)
            if k == 0 or b == 0:
                assert e["trace"] is None
                continue
            t = e["trace"]
            assert len(t["loss"]) == len(t["distance"]) >= 1 and all(v is not None for v in t["loss"])
            assert max(t["distance"]) <= eps_abs[k] * (1 + 1e-5) + 1e-6
            if not t["adversarial-on-path"]:
                assert len(t["loss"]) == STEPS + 1, "one entry per step: the start and each of the steps"


def test_samples_index_pngs_and_traces_agree_with_the_curve(client, worker, appdata, assets):
    job, out = finished(client, BODY)
    assert out["inspection"]["count"] == 6 and out["inspection"]["limit"] == 32
    assert [s["index"] for s in out["inspection"]["samples"]] == list(range(6))
    assert out["timing"]["inspection-seconds"] > 0
    index = client.get(f"/api/security_evaluations/{job}/samples").get_json()
    assert index["count"] == 6 and [s["sample"] for s in index["samples"]] == list(range(6))
    eps_abs = out["attack"]["epsilons-absolute"]
    broken = broken_at(appdata, job)
    assert_agrees_with_the_curve(index, broken, eps_abs)
    assert index["attribution"]["method"] == "integrated-gradients"

    changed = unchanged = 0
    for s in index["samples"]:
        clean = png(client, s["links"]["clean"])
        assert clean.shape == (128, 128) and clean.min() < clean.max(), "a magnified 8x8 grey digit, not blank"
        expected = np.round(assets.x[s["index"], 0] * 255).astype(np.uint8)
        assert np.array_equal(clean[::16, ::16], expected), "the stored sample, pixel for pixel"
        heat = png(client, s["links"]["attribution-clean"])
        assert heat.shape == (128, 128, 3) and heat.min() < heat.max()
        for k, e in enumerate(s["epsilons"][1:], start=1):
            adv, diff = png(client, e["images"]["adversarial"]), png(client, e["images"]["difference"])
            assert png(client, e["images"]["attribution"]).shape == (128, 128, 3)
            if e["norm"] == 0:  # the attack returned no perturbation: the same image, a uniform mid-grey difference
                assert np.array_equal(adv, clean) and (diff == 128).all(), (s["sample"], k)
                unchanged += 1
            else:
                assert not np.array_equal(adv, clean) and diff.min() < diff.max()
                changed += e["adversarial"]
    # PGD returns its last point where a sample resists, so a zero perturbation is shown only for a sample
    # misclassified before the attack (never attacked); each of those was checked above.
    assert changed, "some sample was broken, so the adversarial images were checked"
    assert unchanged == sum(len(eps_abs) - 1 for s in index["samples"] if broken[s["sample"]] == 0)

    one = client.get(f"/api/security_evaluations/{job}/samples/3").get_json()
    assert one["index"] == 3 and one["links"]["self"].endswith(f"/{job}/samples/3") and len(one["epsilons"]) == len(EPS)


HOSTILE_PATHS = [
    "samples/0/..%2F..%2Fsamples.npz.png",
    "samples/0/../../samples.npz",
    "samples/0/adversarial-0.png",  # epsilon 0 has no adversarial image
    "samples/0/adversarial-9.png",
    "samples/0/Clean.png",
    "samples/0/clean.PNG",
    "samples/00/clean.png",
    "samples/7/clean.png",  # not inspected
    "samples/-1",
    "samples/%2e%2e",
    "samples/0/" + "a" * 300 + ".png",
    "samples/0/index.json",
]


def test_hostile_sample_and_image_names_get_404_json(client, worker, assets):
    job, _ = finished(client, {**BODY, "attack": "fgsm", "attack-params": {}, "indexes": [0, 1], "inspect-samples": 2})
    assert client.get(f"/api/security_evaluations/{job}/samples/0/clean.png").status_code == 200
    for path in HOSTILE_PATHS:
        r = client.get(f"/api/security_evaluations/{job}/{path}")
        assert r.status_code == 404 and r.is_json and r.get_json()["error"], (path, r.status_code, r.data[:200])


def test_unknown_unfinished_and_old_evaluations_answer_json(client, worker, appdata, assets):
    for bad in ("nope", "../../etc", "00000000-0000-0000-0000-000000000000"):
        r = client.get(f"/api/security_evaluations/{bad}/samples")
        assert r.status_code == 404 and r.is_json
    slow = submit(client, {**BODY, "attack-params": {"steps": 5000}, "perturbation-values": [0.01, 0.02]})
    wait_status(client, slow, statuses=("started",))
    r = client.get(f"/api/security_evaluations/{slow}/samples")
    assert r.status_code == 409 and r.get_json()["details"]["job-status"] == "started"
    client.delete(f"/api/security_evaluations/{slow}")
    job, _ = finished(client, {**BODY, "attack": "fgsm", "attack-params": {}, "indexes": [0], "inspect-samples": 1})
    shutil.rmtree(appdata / "evaluations" / job / "inspection")  # as an evaluation finished before this release
    r = client.get(f"/api/security_evaluations/{job}/samples")
    assert r.status_code == 404 and "no per-sample inspection" in r.get_json()["error"]


@pytest.mark.parametrize("value", [0, 33, "8", True, 2.5, None])
def test_inspect_samples_is_validated(client, assets, value):
    r = client.post("/api/security_evaluations", json={**BODY, "inspect-samples": value})
    assert r.status_code == 400 and r.get_json()["details"]["field"] == "inspect-samples", r.get_json()


def test_another_tenants_samples_are_404(settings, worker, assets):
    from app import create_app

    keys = {"key-alice": "alice", "key-bob": "bob"}
    alice, bob = {"X-API-Key": "key-alice"}, {"X-API-Key": "key-bob"}
    folder = assets.dir / "alice"
    folder.mkdir(exist_ok=True)
    for name in ("cnn.onnx", "val.h5"):
        shutil.copyfile(assets.dir / name, folder / name)
    client = create_app({**settings, "api_keys": keys}).test_client()
    body = {
        **BODY,
        "trained-model": "files/alice/cnn.onnx",
        "dataset": "files/alice/val.h5",
        "attack": "fgsm",
        "attack-params": {},
        "indexes": [0, 1],
    }
    job, _ = finished(client, body, alice)
    base = f"/api/security_evaluations/{job}/samples"
    assert client.get(base, headers=alice).status_code == 200
    assert client.get(f"{base}/0/clean.png", headers=alice).status_code == 200
    for path in (base, f"{base}/0", f"{base}/0/clean.png"):
        r = client.get(path, headers=bob)
        assert r.status_code == 404 and r.is_json, path
        assert client.get(path).status_code == 401


class ChannelsLastBytes(nn.Module):
    """A Keras-style export: uint8-scaled N x H x W x 3 in."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 8 * 8, 10))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.permute(0, 3, 1, 2) / 255.0)


def test_nhwc_uint8_colour_samples_are_drawn_in_colour(client, worker, assets):
    import h5py

    folder = assets.dir / "inspect-rgb"
    net = ChannelsLastBytes().eval()
    x = np.random.default_rng(3).integers(0, 256, (12, 8, 8, 3)).astype(np.uint8)
    with torch.no_grad():
        y = net(torch.from_numpy(x).float()).argmax(1).numpy()
    export_onnx(net, (8, 8, 3), folder / "rgb.onnx")
    with h5py.File(folder / "rgb.h5", "w") as fh:
        fh.create_dataset("samples", data=x)
        fh.create_dataset("labels", data=y.astype(np.int64)).attrs["num_classes"] = 10
    body = {
        **BODY,
        "trained-model": "files/inspect-rgb/rgb.onnx",
        "dataset": "files/inspect-rgb/rgb.h5",
        "input-bounds": [0, 255],
        "indexes": list(range(12)),
        "inspect-samples": 3,
    }
    job, out = finished(client, body)
    assert out["model-notes"]["input-layout"] == "nhwc" and out["clean-accuracy"] == 1.0
    index = client.get(f"/api/security_evaluations/{job}/samples").get_json()
    s = index["samples"][0]
    clean = png(client, s["links"]["clean"])
    assert clean.shape == (128, 128, 3) and np.array_equal(clean[::16, ::16], x[0]), "the colour sample as stored"
    top = s["epsilons"][-1]
    assert top["adversarial"] and top["norm"] <= 0.2 * 255 * (1 + 1e-5)
    adv = png(client, top["images"]["adversarial"]).astype(int)
    assert adv.shape == (128, 128, 3) and 0 < np.abs(adv - clean).max() <= round(0.2 * 255) + 1


def test_sharded_evaluation_merges_each_shards_inspected_samples(client, worker, appdata, assets):
    body = {
        **BODY,
        "indexes": list(range(48)),
        "shards": 3,
        "shard-size": 16,
        "inspect-samples": 20,
        "attack": "fgsm",
        "attack-params": {},
    }
    job, out = finished(client, body)
    assert out["shards"]["count"] == 3
    assert out["inspection"]["count"] == 20 and [s["sample"] for s in out["inspection"]["samples"]] == list(range(20))
    index = client.get(f"/api/security_evaluations/{job}/samples").get_json()
    assert_agrees_with_the_curve_fgsm(index, broken_at(appdata, job), out["attack"]["epsilons-absolute"])
    assert png(client, index["samples"][19]["links"]["clean"]).shape == (128, 128), "a sample from the second shard"


def assert_agrees_with_the_curve_fgsm(index: dict, broken: np.ndarray, eps_abs: list[float]) -> None:
    for s in index["samples"]:
        b = int(broken[s["position"]])
        assert [e["adversarial"] for e in s["epsilons"]] == [b <= k for k in range(len(eps_abs))]
        for e in s["epsilons"][1:]:
            assert b == 0 or len(e["trace"]["loss"]) == 2, "FGSM: the start and its one step"
