"""The reliability checks: models built to mask gradients (real ONNX files: an input rounded inside the graph,
a saturated softmax) come out ``reliable: false`` naming the right checks, through the live service (a real
worker and Redis); the plain CNN comes out ``reliable: true``. The two checks computed from the attack's
per-step traces are tested on traces of real PGD runs on the digits CNN."""

from __future__ import annotations

import pytest
import torch
from masked import rounding_cnn, saturated_cnn

from app import reliability
from conftest import submit, upload_model, wait_status

EPS = [0.0, 0.1, 0.2]
NAMES = [
    "curve-never-rises",
    "no-weaker-than-fgsm",
    "falls-towards-chance",
    "input-gradients",
    "logits-not-probabilities",
    "deterministic-forward",
    "loss-converged",
    "path-adversarial-kept",
    "gradient-free-attack",
]


def evaluated(client, model_id: str) -> dict:
    body = {"trained-model": model_id, "dataset": "files/val.h5", "preprocessing": {}, "perturbation-values": EPS}
    job_id = submit(client, body)
    assert wait_status(client, job_id, timeout=600)["job-status"] == "finished"
    return client.get(f"/api/security_evaluations/{job_id}/output").get_json()


def statuses(out: dict) -> dict[str, str]:
    assert [c["name"] for c in out["checks"]] == NAMES
    for c in out["checks"]:
        assert c["status"] in ("pass", "warn") and c["message"].endswith(".") and len(c["message"]) > 30, c
    return {c["name"]: c["status"] for c in out["checks"]}


@pytest.mark.parametrize(
    "build, flagged",
    [
        (rounding_cnn, {"input-gradients", "gradient-free-attack"}),
        (saturated_cnn, {"logits-not-probabilities", "input-gradients", "gradient-free-attack"}),
    ],
    ids=["input-rounded-in-the-graph", "saturated-softmax"],
)
def test_a_model_that_masks_gradients_is_evaluated_and_flagged_unreliable(client, worker, assets, tmp_path, build, flagged):
    path = build(tmp_path / f"{build.__name__}.onnx")
    model = upload_model(client, path)  # ready, not unsupported: it is evaluated so the checks can flag it
    if build is rounding_cnn:
        assert model["verification"]["gradient"] == "zero" and "gradients are all zero" in model["verification"]["note"]
    out = evaluated(client, model["id"])
    seen = statuses(out)
    assert out["reliable"] is False
    assert {name for name, s in seen.items() if s == "warn"} >= flagged, out["checks"]
    assert seen["curve-never-rises"] == seen["deterministic-forward"] == "pass"
    # The curve alone would have called it robust: the attack barely moves accuracy.
    ys = out["sec-curve"]["y-values"]
    assert ys[-1] > 0.8 * ys[0], ys
    gf = next(c for c in out["checks"] if c["name"] == "gradient-free-attack")
    # The share it broke times the share left standing: the accuracy the curve overstates, far above 2 points.
    assert gf["value"] == pytest.approx(gf["count"] / gf["samples"] * gf["standing"] / gf["evaluated"])
    assert gf["value"] > 0.5 and gf["evaluated"] == 120 and "Square" in gf["message"]


def test_the_plain_cnn_is_reliable_and_every_figure_is_there(client, worker, assets):
    model = upload_model(client, assets.model)
    assert model["verification"]["gradient"] == "ok" and "note" not in model["verification"]
    out = evaluated(client, model["id"])
    assert set(statuses(out).values()) == {"pass"}, out["checks"]
    assert out["reliable"] is True
    by_name = {c["name"]: c for c in out["checks"]}
    assert by_name["input-gradients"]["value"] == 0 and by_name["input-gradients"]["samples"] == 64
    assert by_name["falls-towards-chance"]["value"] <= 0.1
    # Measured on the per-sample inspection's traces of the real attack: every traced run counts.
    assert by_name["path-adversarial-kept"]["samples"] > 0 and by_name["path-adversarial-kept"]["value"] == 0
    assert by_name["loss-converged"]["value"] is not None and "Not measured" not in by_name["loss-converged"]["message"]
    fig = out["figures"]
    assert [row["epsilon"] for row in fig["per-epsilon"]] == EPS
    assert [row["accuracy"] for row in fig["per-epsilon"]] == out["sec-curve"]["y-values"]
    assert fig["breaking-perturbation"]["source"] == "epsilon-grid" and fig["breaking-perturbation"]["count"] > 0
    assert out["timing"]["checks-seconds"] > 0


def test_the_noise_baseline_is_not_judged_as_an_attack(client, worker, assets):
    body = {"trained-model": "files/cnn.onnx", "dataset": "files/val.h5", "preprocessing": {}, "perturbation-values": EPS}
    job_id = submit(client, {**body, "perturbation-type": "random"})
    assert wait_status(client, job_id, timeout=600)["job-status"] == "finished"
    out = client.get(f"/api/security_evaluations/{job_id}/output").get_json()
    seen = statuses(out)
    assert out["reliable"] is True and set(seen.values()) == {"pass"}
    for c in out["checks"]:
        if c["name"] in reliability.ATTACK_CHECKS:
            assert c["value"] is None and "random-noise baseline" in c["message"]
    assert next(c for c in out["checks"] if c["name"] == "input-gradients")["samples"] == 64


# -- the two checks from traces ---------------------------------------------------------------------------
def traced_pgd(model, x, y, eps: float, steps: int, step: float) -> list[dict]:
    """A plain L-inf PGD from the clean point, tracing each sample: cross-entropy of the true class and the
    distance at every step, whether any point was adversarial, and whether the returned point is. A sample's
    run ends at its first adversarial point and returns it, as the sweep's attacks do."""
    delta = torch.zeros_like(x)
    losses, dists, advs = [], [], []
    first, on_path = torch.zeros_like(x), torch.zeros(len(x), dtype=torch.bool)
    for _ in range(steps):
        delta.requires_grad_(True)
        logits = model(x + delta)
        loss = torch.nn.functional.cross_entropy(logits, y, reduction="none")
        (grad,) = torch.autograd.grad(loss.sum(), delta)
        adv = logits.argmax(1) != y
        first = torch.where((adv & ~on_path).view(-1, 1, 1, 1), delta.detach(), first)
        on_path |= adv
        losses.append(loss.detach())
        dists.append(delta.detach().flatten(1).abs().amax(1))
        advs.append(adv)
        delta = ((delta.detach() + step * eps * grad.sign()).clamp(-eps, eps) + x).clamp(0, 1) - x
    with torch.no_grad():
        returned_adv = model(x + first).argmax(1) != y
    loss_t, dist_t, adv_t = torch.stack(losses, 1), torch.stack(dists, 1), torch.stack(advs, 1)
    traces = []
    for i in range(len(x)):
        end = int(adv_t[i].nonzero()[0, 0]) + 1 if on_path[i] else steps
        traces.append(
            {
                "loss": loss_t[i, :end].tolist(),
                "distance": dist_t[i, :end].tolist(),
                "adversarial-on-path": bool(on_path[i]),
                "returned-adversarial": bool(returned_adv[i]),
            }
        )
    return traces


@pytest.fixture(scope="module")
def cnn(assets):
    from app.engine.models import load_onnx

    model, _ = load_onnx(assets.model, None)
    return model, torch.from_numpy(assets.x[:48]), torch.from_numpy(assets.y[:48])


def test_loss_converged_warns_when_the_attack_stopped_while_its_loss_was_still_rising(cnn):
    model, x, y = cnn
    settled = reliability.from_traces(traced_pgd(model, x, y, 0.05, steps=100, step=0.1))[0]
    assert settled["name"] == "loss-converged" and settled["status"] == "pass" and settled["samples"] > 10, settled
    cut_short = reliability.from_traces(traced_pgd(model, x, y, 0.05, steps=10, step=0.01))[0]
    assert cut_short["status"] == "warn" and cut_short["value"] > 0.5, cut_short
    assert "still rising" in cut_short["message"]


def traced_noise(model, x, y, eps: float, draws: int) -> list[dict]:
    """A random search that returns its last draw (a bug the check must catch): random signs of size ``eps``."""
    g = torch.Generator().manual_seed(0)
    losses, advs = [], []
    with torch.no_grad():
        for _ in range(draws):
            delta = ((torch.rand(x.shape, generator=g) < 0.5).float() * 2 - 1) * eps
            logits = model((x + delta).clamp(0, 1))
            losses.append(torch.nn.functional.cross_entropy(logits, y, reduction="none"))
            advs.append(logits.argmax(1) != y)
    loss_t, adv_t = torch.stack(losses, 1), torch.stack(advs, 1)
    return [
        {
            "loss": loss_t[i].tolist(),
            "distance": [eps] * draws,
            "adversarial-on-path": bool(adv_t[i].any()),
            "returned-adversarial": bool(adv_t[i, -1]),
        }
        for i in range(len(x))
    ]


def test_path_adversarial_kept_warns_when_an_adversarial_point_was_thrown_away(cnn):
    model, x, y = cnn
    last_draw = traced_noise(model, x, y, 0.3, draws=20)
    thrown = sum(t["adversarial-on-path"] and not t["returned-adversarial"] for t in last_draw)
    check = reliability.from_traces(last_draw)[1]
    assert thrown > 0 and check["name"] == "path-adversarial-kept" and check["status"] == "warn" and check["count"] == thrown
    assert "threw away" in check["message"]
    # PGD as the sweep runs it keeps its first adversarial point: nothing is thrown away.
    kept = reliability.from_traces(traced_pgd(model, x, y, 0.2, steps=20, step=0.1))[1]
    assert kept["status"] == "pass" and kept["count"] == 0 and kept["samples"] == 48


def test_checks_without_traces_say_they_were_not_measured_and_shards_combine_by_counts():
    missing = reliability.from_traces(None)
    assert [c["status"] for c in missing] == ["pass", "pass"] and all("Not measured" in c["message"] for c in missing)
    nothing = reliability.from_traces([])
    assert nothing[0]["value"] is None and "Nothing to check" in nothing[0]["message"]

    def shard(bad_gradients: int, fgsm: int) -> list[dict]:
        out = [reliability.curve([1.0, 0.5])]
        out += [
            reliability.verdict("no-weaker-than-fgsm", fgsm, 30, 0.0),
            reliability.verdict("input-gradients", bad_gradients, 64, 0.05),
        ]
        return out + missing

    a, b = shard(bad_gradients=4, fgsm=0), shard(bad_gradients=0, fgsm=1)
    assert a[2]["status"] == "warn" and b[1]["status"] == "warn"
    merged = {c["name"]: c for c in reliability.combine([a, b], [1.0, 0.5], {})}
    assert list(merged) == NAMES
    assert merged["input-gradients"]["count"] == 4 and merged["input-gradients"]["samples"] == 128
    assert merged["input-gradients"]["status"] == "pass"  # 4 of 128 is under the 5% threshold
    assert merged["no-weaker-than-fgsm"]["status"] == "warn" and merged["no-weaker-than-fgsm"]["samples"] == 60
    assert merged["curve-never-rises"]["status"] == "pass"
    assert reliability.combine([a, b], [0.5, 0.6], {})[0]["status"] == "warn"  # judged on the merged curve
