"""Preprocessing defenses (issue 12): each stage does what it claims, attacks cross it adaptively (BPDA, EOT),
the adaptive attack reports a lower defended accuracy than the naive transferred one, a randomized defense
evaluated adaptively passes the reliability checks, and minimal FGM finds each sample's smallest grid epsilon."""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from app import reliability, schemas
from app.defense_catalog import describe, json_schema, validate_defense_params, validate_defenses
from app.engine.assets import write_h5
from app.engine.attacks.fgm_minimal import grid
from app.engine.attacks.geometry import clip_to_bounds, project, steepest_direction
from app.engine.bounds import Limits
from app.engine.checks import fgsm_excess
from app.engine.defenses import Defended, build_stages
from app.engine.evaluation import evaluate
from app.engine.models import load_onnx
from app.exceptions import EvaluationError, ValidationError

SAMPLES = list(range(40))  # of the 120 validation digits: the engine tests' budget


def request(defenses, params=None, **fields):
    """A normalised request, as the API's validation makes it."""
    body = {"trained-model": "m", "dataset": "d", "preprocessing": {}, "indexes": SAMPLES, "inspect-samples": 1, **fields}
    body["defenses"] = defenses
    if params is not None:
        body["defense-params"] = params
    return schemas.evaluation_request(body)


@pytest.fixture(scope="module")
def classifier(assets):
    model, _ = load_onnx(assets.model, None)
    return model


# -- the catalog ----------------------------------------------------------------
def test_defenses_are_normalised_in_order_with_defaults():
    got = validate_defenses([{"name": "jpeg-compression"}, {"name": "spatial-smoothing", "window": 5}])
    assert got == [{"name": "jpeg-compression", "quality": 75}, {"name": "spatial-smoothing", "window": 5}]
    assert validate_defenses(None) == []
    assert validate_defense_params(None) == {"adaptive": True, "eot-draws": 8, "prediction-draws": 16}
    assert validate_defenses([{"name": "gaussian-noise", "sigma": 1}]) == [{"name": "gaussian-noise", "sigma": 1.0}]
    listed = describe()
    assert [d["name"] for d in listed["defenses"]] == ["spatial-smoothing", "jpeg-compression", "gaussian-noise", "bit-depth"]
    assert {d["name"]: d["random"] for d in listed["defenses"]}["gaussian-noise"] is True
    assert json_schema()["defenses"]["maxItems"] == 4


@pytest.mark.parametrize(
    ("value", "field", "words"),
    [
        ({"name": "jpeg-compression"}, "defenses", "expected a list"),
        ([{"name": "bit-depth"}] * 5, "defenses", "at most 4"),
        (["bit-depth"], "defenses[0]", "expected an object"),
        ([{"name": "blur"}], "defenses[0].name", "must be one of ['spatial-smoothing'"),
        ([{"name": "spatial-smoothing", "window": 4}], "defenses[0].window", "must be odd"),
        ([{"name": "spatial-smoothing", "window": 13}], "defenses[0].window", "between 3 and 11"),
        ([{"name": "jpeg-compression", "quality": 0}], "defenses[0].quality", "between 1 and 100"),
        ([{"name": "jpeg-compression", "quality": 50.5}], "defenses[0].quality", "expected an integer"),
        ([{"name": "jpeg-compression", "quality": True}], "defenses[0].quality", "expected an integer"),
        ([{"name": "gaussian-noise", "sigma": 0}], "defenses[0].sigma", "must be in (0, 1]"),
        ([{"name": "gaussian-noise", "sigma": float("nan")}], "defenses[0].sigma", "finite number"),
        ([{"name": "gaussian-noise", "sigma": 10**400}], "defenses[0].sigma", "finite number"),
        ([{"name": "bit-depth", "bits": 9}], "defenses[0].bits", "between 1 and 8"),
        ([{"name": "bit-depth", "levels": 4}], "defenses[0]", "accepted: ['bits']"),
    ],
)
def test_hostile_defenses_are_refused_naming_the_field(value, field, words):
    with pytest.raises(ValidationError) as err:
        validate_defenses(value)
    assert err.value.details == {"field": field}
    assert err.value.message.startswith(f"{field}: ") and words in err.value.message


def test_hostile_defense_params_are_refused_naming_the_field():
    for value, field in (([], "defense-params"), ({"adaptive": "no"}, "defense-params.adaptive"),
                         ({"eot-draws": 0}, "defense-params.eot-draws"), ({"draws": 3}, "defense-params")):  # fmt: skip
        with pytest.raises(ValidationError) as err:
            validate_defense_params(value)
        assert err.value.details == {"field": field}


# -- each stage's forward, and its backward -------------------------------------------
def stage(name: str, bounds=(0.0, 1.0), layout="nchw", **params):
    return build_stages(validate_defenses([{"name": name, **params}]), bounds, layout)[0]


def test_median_smoothing_removes_isolated_salt_noise():
    x = torch.full((2, 1, 8, 8), 0.5)
    salted = x.clone()
    salted[0, 0, 2, 3] = salted[0, 0, 6, 1] = salted[1, 0, 0, 0] = 1.0
    assert torch.equal(stage("spatial-smoothing", window=3)(salted), x)
    nhwc = stage("spatial-smoothing", layout="nhwc", window=3)(salted.permute(0, 2, 3, 1))
    assert torch.equal(nhwc, x.permute(0, 2, 3, 1))


def test_jpeg_is_the_real_codec_in_the_input_range():
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 16, 16, generator=gen) * 2 - 1  # input bounds [-1, 1]
    out = stage("jpeg-compression", bounds=(-1.0, 1.0), quality=30)(x)
    assert out.shape == x.shape and float(out.min()) >= -1 and float(out.max()) <= 1
    assert float((out - x).abs().max()) > 0.05  # it changed the image
    # Sample 0 through Pillow by hand: the stage's output is exactly that round trip.
    pixels = ((x[0] + 1) / 2).mul(255).round().to(torch.uint8).permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(buffer, format="JPEG", quality=30)
    decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())).convert("RGB")).astype(np.float32)
    assert np.allclose(out[0].permute(1, 2, 0).numpy(), decoded / 255 * 2 - 1, atol=1e-6)


def test_bit_depth_leaves_two_to_the_bits_levels():
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 4 + 2  # bounds [2, 6]
    out = stage("bit-depth", bounds=(2.0, 6.0), bits=2)(x)
    levels = torch.tensor([2.0, 2 + 4 / 3, 2 + 8 / 3, 6.0])
    assert torch.allclose(torch.unique(out), levels)  # every level used, nothing else
    assert float((out - x).abs().max()) <= 4 / 6 + 1e-6  # the nearest level


def test_gaussian_noise_has_the_requested_sigma():
    x = torch.full((1, 1, 100, 100), 0.5)
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(2))
    out = stage("gaussian-noise", bounds=(0.0, 2.0), sigma=0.05)(x, noise)
    assert abs(float((out - x).std()) - 0.1) < 0.005  # sigma x the input range (2)


@pytest.mark.parametrize("name", ["jpeg-compression", "spatial-smoothing", "bit-depth"])
def test_the_attack_gets_a_gradient_through_jpeg_median_and_bit_depth(classifier, assets, name):
    """JPEG and bit-depth by BPDA (their real transform has no gradient), the median by its own."""
    x = torch.from_numpy(assets.x[:8]).requires_grad_(True)
    model = Defended(classifier, [stage(name)])
    loss = torch.nn.functional.cross_entropy(model(x), torch.from_numpy(assets.y[:8]))
    (grad,) = torch.autograd.grad(loss, x)
    flat = grad.flatten(1)
    assert torch.isfinite(flat).all() and bool((flat.abs().amax(1) > 0).all())


def test_majority_prediction_is_deterministic_for_a_seed_whatever_the_batch(classifier, assets):
    noisy = [stage("gaussian-noise", sigma=0.3)]
    x = torch.from_numpy(assets.x[:32])
    model = Defended(classifier, noisy, prediction_draws=9, seed=3)
    with torch.no_grad():
        whole = model(x)
        again = Defended(classifier, noisy, prediction_draws=9, seed=3)(x)
        halves = torch.cat([model(x[16:]), model(x[:16])])
        other_seed = Defended(classifier, noisy, prediction_draws=9, seed=4)(x)
    assert torch.equal(whole, again)
    assert torch.equal(whole.argmax(1), torch.cat([halves[16:], halves[:16]]).argmax(1))
    assert torch.allclose(torch.softmax(whole, 1).sum(1), torch.ones(32), atol=1e-5)  # softmax: the vote shares
    assert not torch.equal(whole, other_seed)  # the draws are the seed's: another seed votes on other noise
    second = model.redrawn()  # what the gradient-free check confirms its breaks on
    assert second.model is model.model and list(second.stages) == list(model.stages) and second.prediction_draws == 9
    with torch.no_grad():
        assert torch.equal(second(x), second(x))
        assert not torch.equal(second(x), whole)


# -- through the engine -----------------------------------------------------------------
def test_adaptive_attack_reports_lower_defended_accuracy_than_the_transferred_one(assets):
    """The issue's required test: bit-depth (3 bits) in front of the CNN, PGD (10 steps) at 0.2 of the range.
    The CNN's training is not bit-for-bit repeatable, so measured over 4 trainings and seeds 0-2 (8 runs): accuracy
    adaptive 0.125-0.175, transferred 0.3-0.5, a gap of 0.175 to 0.375; asserted as 0.1."""
    params = {"steps": 10, "step-size": 0.25}
    eps = [0.0, 0.1, 0.2]
    out = {}
    for adaptive in (True, False):
        req = request([{"name": "bit-depth", "bits": 3}], {"adaptive": adaptive}, attack="pgd",
                      **{"attack-params": params, "perturbation-values": eps})  # fmt: skip
        out[adaptive] = evaluate(req, assets.model, assets.dataset, device="cpu")
    adaptive, naive = out[True], out[False]
    assert adaptive["undefended"] == naive["undefended"]  # the same bare-model sweep on the same samples
    assert adaptive["defenses"] == [{"name": "bit-depth", "bits": 3, "random": False, "crossing": "bpda-identity"}]
    assert adaptive["defense-params"] == {"adaptive": True, "random": False}
    assert naive["defense-params"]["adaptive"] is False
    ys_adaptive, ys_naive = adaptive["sec-curve"]["y-values"], naive["sec-curve"]["y-values"]
    assert all(a <= n for a, n in zip(ys_adaptive, ys_naive)), (ys_adaptive, ys_naive)
    assert ys_adaptive[-1] + 0.1 <= ys_naive[-1], (ys_adaptive, ys_naive)
    assert adaptive["sec-value"] < naive["sec-value"]
    # The checks' own (adaptive) FGSM catches the naive evaluation.
    assert not naive["reliable"]


def test_randomized_defense_evaluated_adaptively_passes_the_reliability_checks(assets):
    """Gaussian noise (sigma 0.1), PGD 40 steps with the default 8 EOT draws and 16 voting draws, all 120 samples
    (with 40, one sample the gradient-free check breaks is 2.5 points, over its 2: with 20 steps and 4 draws it warned
    on 1 of 5 trainings of the CNN, on 0 of 4 with this setting)."""
    req = request([{"name": "gaussian-noise", "sigma": 0.1}], None, attack="pgd", indexes=list(range(120)),
                  **{"attack-params": {"steps": 40, "step-size": 0.25}, "perturbation-values": [0.0, 0.1, 0.2]})  # fmt: skip
    out = evaluate(req, assets.model, assets.dataset, device="cpu")
    checks = {c["name"]: c for c in out["checks"]}
    assert out["reliable"], [c for c in out["checks"] if c["status"] != "pass"]
    assert "declared random defense (gaussian-noise)" in checks["deterministic-forward"]["message"]
    assert out["defense-params"] == {"adaptive": True, "random": True, "eot-draws": 8, "prediction-draws": 16}
    assert out["sec-curve"]["y-values"][-1] <= out["undefended"]["sec-curve"]["y-values"][-1] + 0.2
    # The two comparisons between attacks allow for the draws, and say so.
    fgsm, gf = checks["no-weaker-than-fgsm"], checks["gradient-free-attack"]
    assert fgsm["scatter"] >= 0 and "scatter of the draws" in fgsm["message"]
    if gf["samples"]:  # some sample left standing at 0.2 (on each of 40 trainings, 2 to 13 of 120)
        assert 0 <= gf["own-draws-only"] <= gf["samples"] - gf["count"]
        assert "second, independent set of the random defense's draws" in gf["message"]


def test_a_defended_job_checks_disk_for_both_sweeps_checkpoints(assets, tmp_path):
    """The undefended sweep's checkpoint stays (a resume skips that sweep) while the defended one writes its own:
    under a 1 MB cap, 1,200 samples of 8x8 fit one sweep's files (0.68 MB) but not two (1.36 MB)."""
    data = write_h5(tmp_path / "big.h5", np.tile(assets.x, (10, 1, 1, 1)), np.tile(assets.y, 10), n_classes=10)
    fields = {"indexes": None, "attack": "fgsm", "perturbation-values": [0.0, 0.1]}
    cap = Limits(disk_mb=1)
    bare = evaluate(request([], **fields), assets.model, data, device="cpu", work_dir=tmp_path / "bare", limits=cap)
    assert bare["n-samples"] == 1200
    with pytest.raises(EvaluationError) as err:
        evaluate(request([{"name": "bit-depth"}], **fields), assets.model, data, device="cpu", work_dir=tmp_path / "defended",
                 limits=cap)  # fmt: skip
    assert "not enough disk" in err.value.message and "two sweeps (undefended and defended)" in err.value.message
    assert err.value.details == {"disk-needed-mb": 1.4, "disk-limit-mb": 1}
    assert not list((tmp_path / "defended").rglob("*.np[yz]"))  # refused before a file was written


# A real EOT loss (PGD, 40 steps, 8 draws, gaussian-noise sigma 0.1) on a sample the attack failed on: it climbs for
# 10 steps and then jitters on a plateau; compared with the quarter just before, its last quarter had risen by 0.11.
PLATEAU = [0.01, 0.036, 0.104, 0.098, 0.253, 0.378, 0.412, 0.346, 0.484, 0.515, 0.72, 0.452, 0.693, 0.424, 0.555,
           0.749, 0.74, 0.317, 0.74, 0.619, 0.59, 0.456, 0.588, 0.616, 0.501, 0.623, 0.462, 0.364, 0.317, 0.378,
           0.363, 0.727, 0.379, 0.384, 0.512, 0.638, 0.732, 0.511, 0.708, 0.641, 0.62]  # fmt: skip


def test_an_eot_loss_jittering_on_a_plateau_is_not_still_rising_but_a_climbing_one_is():
    assert not reliability.still_rising(PLATEAU, noisy=True)
    climbing = np.linspace(0.0, 1.0, 41) + np.random.default_rng(0).normal(0.0, 0.1, 41)
    assert reliability.still_rising(list(climbing), noisy=True)
    assert reliability.still_rising(PLATEAU, noisy=False)  # a deterministic loss keeps the strict rule


def test_fgsm_breaking_more_counts_only_beyond_a_random_defenses_scatter():
    attack = np.zeros((60, 3), dtype=bool)  # per sample and epsilon index, as the sweep counts: broken from then on
    attack[:20, 1:] = attack[23, 1:] = True
    fgsm = attack.copy()
    fgsm[23, 1:] = False
    fgsm[20:23, 1] = True  # index 1: FGSM 23, the attack 21; 4 samples only one of them broke
    assert fgsm_excess(fgsm, attack, random_defense=False) == (2, None)
    assert fgsm_excess(fgsm, attack, random_defense=True) == (0, 4)  # 2 <= 2 sqrt(4)
    fgsm[24:40, 2] = True  # index 2: FGSM 36, the attack 21; 17 discordant, 8 allowed, 7 beyond
    assert fgsm_excess(fgsm, attack, random_defense=True) == (7, 8)
    checked = reliability.verdict("no-weaker-than-fgsm", 7, 60, 0.0, detail={"scatter": 8})
    assert checked["status"] == "warn" and checked["scatter"] == 8 and "beyond the scatter" in checked["message"]


def test_shards_add_up_the_gradient_free_breaks_a_second_set_of_draws_refuted():
    def shard(count: int, own: int) -> list[dict]:
        detail = {"standing": 4, "evaluated": 60, "own-draws-only": own}
        return [reliability.curve([1.0, 0.5]), reliability.verdict("gradient-free-attack", count, 4, 0.02, detail=detail)]

    merged = reliability.combine([shard(1, 2), shard(0, 1)], [1.0, 0.5], {})[-1]
    assert (merged["count"], merged["samples"], merged["own-draws-only"]) == (1, 8, 3)
    assert merged["value"] == pytest.approx(1 / 8 * 8 / 120) and "3 more fooled only the evaluation's own" in merged["message"]


def test_an_undeclared_random_model_still_warns(classifier, assets):
    from app.engine.checks import model_probes

    noisy = torch.nn.Sequential()
    noisy.forward = lambda x: classifier(x + 0.2 * torch.randn_like(x))  # random, and nobody said so
    counts = model_probes(noisy, torch.from_numpy(assets.x[:16]), torch.from_numpy(assets.y[:16]))
    assert counts["deterministic-forward"] > 0


def test_minimal_fgm_finds_each_samples_smallest_grid_epsilon(assets, classifier, tmp_path):
    eps = [0.0, 0.05, 0.1, 0.2]
    req = request([], attack="fgm-minimal", **{"attack-params": {"grid-steps": 8}, "perturbation-values": eps})
    out = evaluate(req, assets.model, assets.dataset, device="cpu", work_dir=tmp_path)
    with np.load(tmp_path / "samples.npz") as arrays:
        found, broken_at = arrays["min_norm"], arrays["broken_at"]
    # Brute force: every grid value in turn, one FGSM step each, on the same samples.
    x, y = torch.from_numpy(assets.x[SAMPLES]), torch.from_numpy(assets.y[SAMPLES])
    xg = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(torch.nn.functional.cross_entropy(classifier(xg), y, reduction="sum"), xg)
    direction = steepest_direction(g, "linf")
    expected = np.full(len(y), np.inf)
    with torch.no_grad():
        correct = (classifier(x).argmax(1) == y).numpy()
        for e in reversed(grid(eps, 8)):
            adv = x + clip_to_bounds(x, project(e * direction, e, "linf"), (0.0, 1.0))
            expected[(classifier(adv).argmax(1) != y).numpy() & correct] = e
    assert np.allclose(found[correct], expected[correct], rtol=1e-6)
    assert np.isfinite(expected[correct]).sum() >= 10  # the check compares real values, not only "none found"
    # The curve counts a sample broken from its minimal epsilon on.
    for k, e in enumerate(eps[1:], start=1):
        assert ((broken_at <= k) & correct).sum() == (found[correct] <= e + 1e-9).sum()
    assert out["figures"]["breaking-perturbation"]["source"] == "minimal-norm"
    assert out["attack"]["name"] == "fgm-minimal"
