"""The figures of every evaluation (accuracy with Wilson intervals, attack success rate, true-class confidence,
per-class accuracy, breaking perturbation), checked against brute-force recomputations on real evaluations of
the digits CNN; and the same figures from shards merged, and from a resumed job, as from one uninterrupted job."""

from __future__ import annotations

import uuid

import numpy as np
import onnxruntime as ort
import pytest
import torch

from app import schemas
from app.engine.attacks import StopRequested
from app.engine.evaluation import evaluate
from app.figures import wilson

EPS = [0.0, 0.05, 0.1, 0.2]


@pytest.fixture(autouse=True)
def one_thread():
    """One torch thread for these in-process runs (the worker's TORCH_THREADS=1): on a shared 2-core box,
    torch's default of one thread per core makes a small CNN's forward pass ten times slower."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)


def request(**fields):
    body = {"trained-model": "m", "dataset": "d", "preprocessing": {}, "perturbation-values": EPS, "batch-size": 32}
    return schemas.evaluation_request({**body, **fields})


def samples(work_dir) -> dict[str, np.ndarray]:
    with np.load(work_dir / "samples.npz", allow_pickle=False) as f:
        return {name: f[name] for name in f.files}


def test_wilson_interval_matches_published_values():
    # Newcombe (1998), "Two-sided confidence intervals for the single proportion", Table I (Wilson score, no correction).
    assert wilson(81, 263) == pytest.approx([0.2553, 0.3662], abs=1e-4)
    assert wilson(15, 148) == pytest.approx([0.0624, 0.1605], abs=1e-4)
    assert wilson(0, 20) == pytest.approx([0.0, 0.1611], abs=1e-4)
    assert wilson(8, 10) == pytest.approx([0.4902, 0.9433], abs=1e-4)
    assert wilson(3, 0) is None
    # No successes (or all): the bound is exactly 0 (or 1), not the formula's rounding (3.5e-18 at n=100).
    assert [wilson(0, n)[0] for n in (20, 100, 117, 1000)] == [0.0] * 4
    assert [wilson(n, n)[1] for n in (20, 100, 117, 1000)] == [1.0] * 4


@pytest.mark.parametrize("attack", ["pgd", "fmn"])
def test_figures_of_a_real_evaluation_match_a_brute_force_recount(assets, tmp_path, attack):
    out = evaluate(request(attack=attack), assets.model, assets.dataset, work_dir=tmp_path)
    fig, per = out["figures"], samples(tmp_path)
    labels, broken_at, conf = per["label"], per["broken_at"], per["true_conf"]
    assert list(labels) == list(assets.y) and conf.shape == (120, len(EPS)) and np.isfinite(conf).all()
    classes = sorted(set(int(v) for v in assets.y))
    assert fig["classes"] == classes and fig["class-counts"] == [int((assets.y == c).sum()) for c in classes]
    # The clean confidence, independently: onnxruntime on the file as uploaded (it ends in a softmax).
    session = ort.InferenceSession(str(assets.model), providers=["CPUExecutionProvider"])
    probs = session.run(None, {session.get_inputs()[0].name: assets.x.astype(np.float32)})[0]
    clean = probs[np.arange(120), assets.y]
    assert conf[:, 0] == pytest.approx(clean, abs=1e-5)
    assert fig["mean-true-confidence-clean"] == pytest.approx(float(clean.mean()), abs=1e-6)
    correct_before = [i for i in range(120) if probs[i].argmax() == assets.y[i]]
    assert len(fig["per-epsilon"]) == len(EPS)
    for k, row in enumerate(fig["per-epsilon"]):
        right = [i for i in range(120) if broken_at[i] > k]
        assert row["epsilon"] == EPS[k] and row["n"] == 120
        assert row["accuracy"] == len(right) / 120 == out["sec-curve"]["y-values"][k]
        assert row["accuracy-ci95"] == pytest.approx(wilson(len(right), 120))
        lo, hi = row["accuracy-ci95"]
        assert lo <= row["accuracy"] <= hi
        fooled = [i for i in correct_before if broken_at[i] <= k]
        assert row["attack-success-rate"] == pytest.approx(len(fooled) / len(correct_before))
        assert row["attack-success-rate-ci95"] == pytest.approx(wilson(len(fooled), len(correct_before)))
        for c, acc in zip(classes, row["per-class-accuracy"]):
            members = [i for i in range(120) if assets.y[i] == c]
            assert acc == pytest.approx(sum(broken_at[i] > k for i in members) / len(members))
        assert row["mean-true-confidence"] == pytest.approx(float(conf[:, k].mean()), rel=1e-6)
        # At an epsilon where a sample counts as broken, its recorded point fools the model: the true class
        # is not the top one, so its probability is below one half.
        assert all(conf[i, k] < 0.5 for i in range(120) if broken_at[i] <= k), k
    # A sample never broken is recorded at the point the attack returned at the largest epsilon: still correct.
    assert all(conf[i, -1] >= 0.1 for i in range(120) if broken_at[i] == len(EPS))
    assert fig["per-epsilon"][-1]["mean-true-confidence"] < fig["mean-true-confidence-clean"]
    assert fig["per-epsilon"][0]["attack-success-rate"] == 0.0
    bp = fig["breaking-perturbation"]
    if attack == "fmn":  # the minimal norms found, beyond the grid too, as fractions of the range [0, 1]
        values = [min(per["min_norm"][i], np.nan_to_num(per["norm"][i], nan=np.inf)) for i in correct_before]
        values = [v for v in values if np.isfinite(v) and v > 0]
        assert bp["source"] == "minimal-norm"
    else:  # the smallest grid epsilon that broke each sample correct before the attack
        values = [EPS[broken_at[i]] for i in correct_before if broken_at[i] < len(EPS)]
        assert bp["source"] == "epsilon-grid"
    assert bp["count"] == len(values) > 0 and bp["norm"] == "linf" and bp["unit"] == "fraction of the input range"
    assert bp["median"] == pytest.approx(float(np.median(values)), rel=1e-6)
    assert bp["q1"] <= bp["median"] <= bp["q3"]


def test_merged_shards_give_the_same_figures_as_one_job(assets, tmp_path):
    """The merge (the very function the merge job runs) recomputes the figures from the shards' per-sample files."""
    from app.merge import merged_output
    from app.storage import Storage

    body = {"perturbation-values": EPS, "attack-params": {"steps": 10}, "batch-size": 16, "shard-size": 32, "seed": 7}
    req = request(**body, shards=1)
    whole = evaluate(req, assets.model, assets.dataset, work_dir=tmp_path / "whole")
    storage = Storage(tmp_path / "appdata")
    ranges = [(0, 32), (32, 96), (96, 120)]
    children, results = [], []
    for i, (start, stop) in enumerate(ranges):
        shard = {**req, "shards": 3, "shard": {"index": i, "count": 3, "start": start, "stop": stop}}
        job_id = str(uuid.uuid4())
        results.append({**evaluate(shard, assets.model, assets.dataset, work_dir=storage.job_dir(job_id)), "attempt": 1})
        children.append({"job_id": job_id, "started_at": 0.0})
    parent = {"job_id": str(uuid.uuid4()), "shards": {"shard-size": 32, "ranges": [list(r) for r in ranges]}}
    merged = merged_output(parent, children, results, storage)
    assert merged["figures"] == whole["figures"]
    assert merged["sec-curve"] == whole["sec-curve"]
    for name, arr in samples(tmp_path / "whole").items():
        assert np.array_equal(samples(storage.job_dir(parent["job_id"]))[name], arr, equal_nan=True), name
    # The checks: each shard probed its own samples; the merge adds their counts up and judges again.
    assert [c["name"] for c in merged["checks"]] == [c["name"] for c in whole["checks"]]
    assert merged["reliable"] == all(c["status"] == "pass" for c in merged["checks"])
    grads = [c for c in merged["checks"] if c["name"] == "input-gradients"][0]
    assert grads["samples"] == sum(next(c for c in r["checks"] if c["name"] == "input-gradients")["samples"] for r in results)
    assert merged["timing"]["checks-seconds"] == pytest.approx(sum(r["timing"]["checks-seconds"] for r in results), abs=0.01)


def test_a_resumed_job_gives_the_same_figures_and_checks(assets, tmp_path):
    req = request(attack="pgd")
    full = evaluate(req, assets.model, assets.dataset, work_dir=tmp_path / "full")
    seen = []
    with pytest.raises(StopRequested):
        evaluate(
            req,
            assets.model,
            assets.dataset,
            work_dir=tmp_path / "work",
            progress=lambda d, t: seen.append(d),
            should_stop=lambda: bool(seen) and seen[-1] >= 2 * 120,  # after the largest epsilon's pass
        )
    resumed = evaluate(req, assets.model, assets.dataset, work_dir=tmp_path / "work")
    assert resumed["resumed"] is True and full["resumed"] is False
    assert resumed["figures"] == full["figures"]
    assert resumed["checks"] == full["checks"] and resumed["reliable"] == full["reliable"]
    assert np.array_equal(samples(tmp_path / "work")["true_conf"], samples(tmp_path / "full")["true_conf"])
