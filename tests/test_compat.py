"""A slice of the compatibility matrix (benchmarks/compat.py) at low resolution, run through the
benchmark's own functions: torchvision architectures with trained-like weights, exported as users
export them, fail in plain onnx2pytorch (before issue 8) and pass through the service's pipeline,
with logits matching onnxruntime and input gradients matching the source torch model's. The
dynamo export with external data is also uploaded (as a zip) and evaluated through the live service.
"""

from __future__ import annotations

import pytest

from benchmarks.compat import COSINE_GOAL, LOGIT_TOL, Reference, build, run_case
from benchmarks.compat_service import Service

SIZE = 32


def assert_fixed(case: dict, failure: str) -> None:
    """The raw export fails in onnx2pytorch with ``failure``; the pipeline's conversion is exact."""
    assert case["export"]["ok"], case["export"]
    assert not case["before"]["ok"] and failure in case["before"]["error"], case["before"]
    after = case["after"]
    assert after["ok"], after
    assert max(after["diff"].values()) <= LOGIT_TOL and after["cosine"] >= COSINE_GOAL
    assert after["notes"]["converter"] == "onnx2pytorch"


@pytest.mark.parametrize(
    "arch, mode, failure, rewrite",
    [
        ("squeezenet1_1", "ts11-dyn", "takes 2 positional arguments but 3 were given", "identity-initializers"),
        ("shufflenet_v2_x0_5", "ts13-b1", "is invalid for input of size", "dynamic-batch"),
    ],
)
def test_torchscript_exports_fail_before_and_pass_after(arch, mode, failure, rewrite, tmp_path):
    case = run_case(build(arch, "calibrated", SIZE), mode, SIZE, tmp_path, timed=False)
    assert_fixed(case, failure)
    assert any(r.startswith(rewrite) for r in case["after"]["notes"]["rewrites"])


def test_dynamo_external_data_export_evaluates_through_the_live_service(tmp_path):
    """torch's default export (fixed batch, weights in model.onnx.data): converted exactly, and the
    service's clean accuracy on it equals onnxruntime's on the same samples."""
    folder = tmp_path / "export"
    case = run_case(build("squeezenet1_1", "calibrated", SIZE), "dynamo-ext", SIZE, folder, timed=False)
    assert case["files"] == ["model.onnx", "model.onnx.data"]
    assert_fixed(case, "is invalid for input of size")
    # Dynamo writes allowzero=1 on its Reshapes: the batch is still made dynamic, not run per sample.
    assert "dynamic-batch" in case["after"]["notes"]["rewrites"] and not case["after"]["notes"].get("batch-1-only")
    service = Service(tmp_path / "appdata")
    try:
        result = service.evaluate(folder, SIZE, Reference(folder / "model.onnx"))
    finally:
        service.close()
    assert result["ok"], result
    assert result["clean"] == result["onnxruntime"] == 0.5
    assert result["converter"] == "onnx2pytorch"
