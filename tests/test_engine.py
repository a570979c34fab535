"""The in-process engine and its command line: checkpoints, resume, the same output as the API."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from app import schemas
from app.engine.attacks import StopRequested
from app.engine.evaluation import evaluate
from conftest import ROOT

EPS = [0.0, 0.02, 0.05, 0.1, 0.2]


def request(**fields):
    return schemas.evaluation_request(
        {"trained-model": "m", "dataset": "d", "preprocessing": {}, "perturbation-values": EPS, **fields}
    )


def test_interrupted_sweep_resumes_from_its_last_epsilon(assets, tmp_path):
    req = request(attack="pgd")
    full = evaluate(req, assets.model, assets.dataset)
    seen = []

    def stop_after_three_epsilons() -> bool:
        return bool(seen) and seen[-1] >= 3 * 120

    with pytest.raises(StopRequested):
        evaluate(
            req,
            assets.model,
            assets.dataset,
            work_dir=tmp_path / "work",
            progress=lambda d, t: seen.append(d),
            should_stop=stop_after_three_epsilons,
        )
    assert (tmp_path / "work" / "checkpoint.npz").exists()
    done_at_resume = []
    resumed = evaluate(
        req, assets.model, assets.dataset, work_dir=tmp_path / "work", progress=lambda d, t: done_at_resume.append(d)
    )
    assert resumed["resumed"] is True
    assert min(done_at_resume) >= 3 * 120 - 120, "the resumed run did not start over"
    assert resumed["sec-curve"] == full["sec-curve"]
    assert not (tmp_path / "work" / "checkpoint.npz").exists() and (tmp_path / "work" / "samples.npz").exists()


def test_checkpoint_of_another_request_is_not_reused(assets, tmp_path):
    with pytest.raises(StopRequested):
        evaluate(request(), assets.model, assets.dataset, work_dir=tmp_path / "w", should_stop=lambda: True)
    other = evaluate(request(seed=5), assets.model, assets.dataset, work_dir=tmp_path / "w")
    assert other["resumed"] is False


def run_cli(assets, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "app", "evaluate", "--trained-model", str(assets.model), "--dataset", str(assets.dataset), *args]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)


def test_command_line_writes_the_same_output_as_the_api(assets, tmp_path):
    out = tmp_path / "result.json"
    proc = run_cli(
        assets,
        "--perturbation-values",
        ",".join(map(str, EPS)),
        "--attack",
        "pgd",
        "--norm",
        "linf",
        "--steps",
        "50",
        "--step-size",
        "0.1",
        "--preprocessing",
        "{}",
        "--output",
        str(out),
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(out.read_text())
    direct = evaluate(request(), assets.model, assets.dataset)
    assert result["sec-curve"] == direct["sec-curve"]
    for key in ("sec-curve", "clean-accuracy", "sec-value", "sec-level", "n-samples", "attack", "model", "dataset", "timing"):
        assert key in result
    assert "sec-value" in proc.stderr  # the table printed beside the file


def test_command_line_reports_bad_fields_clearly(assets):
    proc = run_cli(assets, "--perturbation-values", "0,2", timeout=120)
    assert proc.returncode == 2 and "perturbation-values" in proc.stderr and "Traceback" not in proc.stderr
