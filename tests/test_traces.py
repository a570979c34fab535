"""Every attack's traced steps (the engine, in process): one entry per step, distances inside the
ball (FMN's path excepted, which is judged per epsilon), the shown point agreeing with the curve,
and the tracing hook costing nothing when off."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from app import schemas
from app.engine.attacks import build
from app.engine.attacks.base import Context
from app.engine.attacks.trace import MAX_POINTS, Trace
from app.engine.evaluation import evaluate

EPS = [0.0, 0.05, 0.1, 0.2]
CASES = {
    "fgsm": ({}, 2),  # the start and the one step
    "pgd": ({"steps": 7}, 8),
    "apgd": ({"steps": 6, "loss": "ce"}, 7),
    "fmn": ({"steps": 9}, 10),  # FMN's one minimal-norm run, the same path at every epsilon
    "auto": ({"fmn-steps": 10, "apgd-steps": 5}, None),
    "noise": ({"restarts": 3}, 3),  # one draw per restart
}


def selection(assets) -> list[int]:
    """24 samples, the first of them one the model misclassifies (so the inspection shows one never attacked)."""
    with torch.no_grad():
        wrong = np.flatnonzero(assets.net(torch.from_numpy(assets.x)).argmax(1).numpy() != assets.y)
    assert len(wrong), "the test model is perfect on the test samples: pick another"
    return list(range(int(wrong[0]), int(wrong[0]) + 24))


def run(assets, tmp_path, attack: str, params: dict) -> tuple[dict, dict, np.ndarray]:
    body = {"trained-model": "m", "dataset": "d", "preprocessing": {}, "perturbation-values": EPS}
    body.update({"indexes": selection(assets), "inspect-samples": 6, "attack-params": params})
    body.update({"perturbation-type": "random"} if attack == "noise" else {"attack": attack})
    out = evaluate(schemas.evaluation_request(body), assets.model, assets.dataset, work_dir=tmp_path)
    index = json.loads((tmp_path / "inspection" / "index.json").read_text())
    with np.load(tmp_path / "samples.npz") as f:
        return out, index, f["broken_at"]


@pytest.mark.parametrize("attack", list(CASES))
def test_every_attack_traces_its_steps_and_agrees_with_the_curve(assets, tmp_path, attack):
    params, full = CASES[attack]
    out, index, broken = run(assets, tmp_path, attack, params)
    eps_abs = out["attack"]["epsilons-absolute"]
    assert out["inspection"]["count"] == len(index["samples"]) == 6
    traced = 0
    for s in index["samples"]:
        b = int(broken[s["position"]])
        assert [e["adversarial"] for e in s["epsilons"]] == [b <= k for k in range(len(EPS))]
        for k, e in enumerate(s["epsilons"]):
            if e["adversarial"]:
                assert e["prediction"] != s["label"] and e["norm"] <= eps_abs[k] * (1 + 1e-5) + 1e-6
            if k == 0 or b == 0:
                assert e["trace"] is None
                continue
            t = e["trace"]
            traced += 1
            assert len(t["loss"]) == len(t["distance"]) >= 1
            if attack == "fmn":
                # The path is not confined to the ball: adversarial on the path means inside it.
                assert t["loss"] == s["epsilons"][1]["trace"]["loss"] and len(t["loss"]) == full
            else:
                assert max(t["distance"]) <= eps_abs[k] * (1 + 1e-5) + 1e-6, t["distance"]
            if full is not None and not t["adversarial-on-path"] and attack != "fmn":
                assert len(t["loss"]) == full, (attack, len(t["loss"]))
            if t["returned-adversarial"] and attack != "fmn":
                assert t["adversarial-on-path"], "the returned adversarial was a point of the path"
    assert traced > 0 and broken[0] == 0, "both kinds: samples attacked and one misclassified before the attack"


def test_the_loss_rises_along_a_pgd_path(assets, tmp_path):
    _, index, _ = run(assets, tmp_path, "pgd", {"steps": 30, "random-start": False})
    rising = [
        t["loss"][-1] > t["loss"][0]
        for s in index["samples"]
        for e in s["epsilons"]
        if (t := e["trace"]) is not None and not t["adversarial-on-path"]
    ]
    assert rising and all(rising), "PGD ascends the cross-entropy the trace records"


def test_long_traces_are_thinned_to_evenly_spaced_steps():
    y = torch.zeros(1, dtype=torch.long)
    trace = Trace(y, "linf")
    for i in range(1000):
        trace.record(None, torch.full((1, 4), i / 1000), torch.tensor([[0.0, i / 100]]))
    out = trace.summary(0, 1.0, False)
    assert out["steps"] == 1000 and len(out["loss"]) == len(out["kept-steps"]) == MAX_POINTS
    assert out["kept-steps"][0] == 0 and out["kept-steps"][-1] == 999 and out["distance"][-1] == pytest.approx(0.999)


def test_a_sample_on_several_rows_keeps_its_highest_loss_row_per_step():
    """Targeted losses run side by side: one entry per step, misclassified if any row is."""
    trace = Trace(torch.tensor([0, 1]), "linf")
    rows = torch.tensor([0, 0, 1])
    logits = torch.tensor([[2.0, 0.0], [0.0, 3.0], [0.0, 1.0]])  # sample 0: a safe row and a broken row
    trace.record(rows, torch.zeros(3, 2), logits)
    assert [len(s) for s in trace.steps] == [1, 1]
    loss, _, wrong = trace.steps[0][0]
    assert wrong and loss == pytest.approx(torch.nn.functional.cross_entropy(logits[1:2], torch.tensor([0])).item())


def test_the_sweep_runs_no_trace(assets):
    """The hook is an attribute check in the sweep: no trace object is ever made or called there."""
    seen = []
    original = Context.__init__

    def spy(self, *args, **kwargs):
        original(self, *args, **kwargs)
        seen.append(self.trace)

    attack = build("pgd", norm="linf", params={"steps": 3})
    from app.engine.attacks import ArraySource

    Context.__init__ = spy
    try:
        attack.sweep(assets.net[:-1], ArraySource(assets.x[:16], assets.y[:16]), [0.0, 0.1], (0.0, 1.0))
    finally:
        Context.__init__ = original
    assert seen and all(t is None for t in seen)


def test_a_failing_inspection_leaves_the_curve_and_says_why(assets, tmp_path, monkeypatch):
    """A fault inside the inspection (here captum refusing the model, which a real model may do) must not
    cost the user the evaluation: the curve stands, ``inspection.error`` says why there are no samples."""
    from app.engine import inspect_samples

    def refuse(*args, **kwargs):
        raise RuntimeError("attribution is not supported by this model")

    monkeypatch.setattr(inspect_samples, "integrated_gradients", refuse)
    body = {"trained-model": "m", "dataset": "d", "preprocessing": {}, "perturbation-values": EPS, "attack": "fgsm"}
    out = evaluate(
        schemas.evaluation_request({**body, "indexes": list(range(8))}), assets.model, assets.dataset, work_dir=tmp_path
    )
    assert len(out["sec-curve"]["y-values"]) == len(EPS) and out["inspection"]["count"] == 0
    assert "attribution is not supported" in out["inspection"]["error"]
    assert not (tmp_path / "inspection").exists()
