"""The conversion pipeline on real exports that broke onnx2pytorch (issue 8).

Every model is exported here by ``torch.onnx.export(dynamo=False)`` at a low resolution.
Each case first shows the raw export failing in onnx2pytorch, so the test proves the
rewrite is what fixes it, then checks the converted model against onnxruntime at batch 1
and 4 and that input gradients are finite and not all zero.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torchvision
from onnx2pytorch import ConvertModel
from torch import nn

from app.engine import conversion
from app.engine.models import convert, load_onnx
from benchmarks.compat import trained_like

SIZE = 16


class TwinConvs(nn.Module):
    """Two convolutions with equal zero biases: the exporter deduplicates them through Identity."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Conv2d(3, 4, 3, padding=1)
        self.b = nn.Conv2d(4, 4, 3, padding=1)
        for conv in (self.a, self.b):
            nn.init.zeros_(conv.bias)
        self.fc = nn.Linear(4 * SIZE * SIZE, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.b(torch.relu(self.a(x)))).flatten(1))


class UnfoldedBatchNorm(nn.Module):
    """A batch norm after a ReLU: it cannot be folded into the convolution, so opset 17 keeps ``training_mode``."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.bn.running_mean.uniform_(-0.5, 0.5)
        self.bn.running_var.uniform_(0.5, 2.0)
        self.fc = nn.Linear(4 * SIZE * SIZE, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.bn(torch.relu(self.conv(x)))).flatten(1))


class BakedBatch(nn.Module):
    """``reshape(x.shape[0], ...)``: exported at a fixed batch 1, the Reshape constants say 1."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.fc = nn.Linear(4 * SIZE * SIZE, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        y = self.conv(x).reshape(n, 2, 2, SIZE, SIZE).transpose(1, 2).reshape(n, 4, SIZE, SIZE)
        return self.fc(y.reshape(n, -1))


def export(model: nn.Module, opset: int, dynamic: bool, size: int = SIZE, **options) -> onnx.ModelProto:
    model.eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model,
            torch.randn(1, 3, size, size),
            buffer,
            dynamo=False,
            opset_version=opset,
            input_names=["x"],
            output_names=["y"],
            dynamic_axes={"x": {0: "n"}, "y": {0: "n"}} if dynamic else None,
            **options,
        )
    return onnx.load_from_string(buffer.getvalue())


def raw_conversion_error(proto: onnx.ModelProto, size: int = SIZE) -> str:
    """onnx2pytorch on the export as is: the error it fails with (conversion or a batch-4 run), or ''."""
    copy = onnx.ModelProto()
    copy.CopyFrom(proto)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ConvertModel(copy, experimental=True)(torch.rand(4, 3, size, size))
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    return ""


def check_against_onnxruntime(proto: onnx.ModelProto, reference: onnx.ModelProto, size: int = SIZE) -> dict:
    """Convert ``proto`` and compare with onnxruntime running ``reference`` (a dynamic-batch export)."""
    network, notes = convert(proto)
    session = ort.InferenceSession(reference.SerializeToString(), providers=["CPUExecutionProvider"])
    for batch in (1, 4):
        x = torch.rand(batch, 3, size, size, requires_grad=True)
        logits = network(x)
        expected = session.run(None, {"x": x.detach().numpy()})[0]
        assert logits.shape == expected.shape
        assert np.abs(logits.detach().numpy() - expected).max() < 1e-4
        logits.logsumexp(1).sum().backward()
        assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    return notes


def test_identity_fed_initializers_are_folded():
    torch.manual_seed(0)
    model = TwinConvs()
    proto = export(model, 13, dynamic=True)
    assert any(n.op_type == "Identity" for n in proto.graph.node)
    assert "takes 2 positional arguments but 3 were given" in raw_conversion_error(proto)
    notes = check_against_onnxruntime(proto, export(model, 13, dynamic=True))
    assert notes["converter"] == "onnx2pytorch" and notes["rewrites"] == ["identity-initializers: 1"]


def test_training_mode_of_unfolded_batch_norm_is_dropped():
    torch.manual_seed(0)
    model = UnfoldedBatchNorm()
    options = {"training": torch.onnx.TrainingMode.PRESERVE, "do_constant_folding": False}
    proto = export(model, 17, dynamic=True, **options)
    assert "training_mode not implemented" in raw_conversion_error(proto)
    notes = check_against_onnxruntime(proto, export(model, 17, dynamic=True, **options))
    assert "training-mode: 1" in notes["rewrites"]


def test_fixed_batch_of_one_is_made_dynamic():
    torch.manual_seed(0)
    model = BakedBatch()
    proto = export(model, 13, dynamic=False)
    assert proto.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 1
    assert raw_conversion_error(proto)  # batch 4 runs into the baked-in 1
    notes = check_against_onnxruntime(proto, export(model, 13, dynamic=True))
    assert notes["rewrites"] == ["dynamic-batch"] and "batch-1-only" not in notes


def test_a_leading_one_that_is_not_the_batch_is_left_alone():
    """A Reshape to [1, -1] of a weight (not of the input) keeps its 1: only the batch is rewritten."""

    class WeightReshape(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.w = nn.Parameter(torch.randn(5, 3))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            scale = self.w.sum(1).reshape(1, -1)  # [1, 5], the same for every sample
            return x.mean((2, 3)) @ self.w.t() * scale

    model = WeightReshape()
    proto = export(model, 13, dynamic=False, do_constant_folding=False)
    dynamic = conversion.make_batch_dynamic(proto)
    assert dynamic is not None
    shapes = [t for t in dynamic.graph.initializer if t.name.endswith("__batch")]
    assert shapes == []
    check_against_onnxruntime(proto, export(model, 13, dynamic=True, do_constant_folding=False))


class ClassToken(nn.Module):
    """A ViT-style class token: ``expand`` (or ``repeat``) to the batch, then concatenated with the patches."""

    def __init__(self, tile: bool = False) -> None:
        super().__init__()
        self.tile = tile
        self.token = nn.Parameter(torch.randn(1, 1, 3))
        self.fc = nn.Linear(3, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = x.flatten(2).transpose(1, 2)
        n = x.shape[0]
        token = self.token.repeat(n, 1, 1) if self.tile else self.token.expand(n, -1, -1)
        tokens = torch.cat([token, tokens], 1)
        return self.fc(tokens.mean(1) + tokens[:, 0])


class TinyViT(nn.Module):
    """Patches, a class token, a position embedding and one attention block written batch-first with
    ``reshape(n, ...)``: exported at batch 1, the Expand and the Reshapes all bake the batch in."""

    def __init__(self, dim: int = 8, heads: int = 2) -> None:
        super().__init__()
        self.heads = heads
        self.patch = nn.Conv2d(3, dim, 4, stride=4)
        self.token = nn.Parameter(torch.randn(1, 1, dim))
        self.pos = nn.Parameter(torch.randn(1, (SIZE // 4) ** 2 + 1, dim))
        self.qkv, self.out, self.head = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim), nn.Linear(dim, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        t = self.patch(x).flatten(2).transpose(1, 2)
        t = torch.cat([self.token.expand(n, -1, -1), t], 1) + self.pos
        q, k, v = self.qkv(t).reshape(n, t.shape[1], 3, self.heads, -1).permute(2, 0, 3, 1, 4)
        a = torch.softmax(q @ k.transpose(-1, -2) / 2.0, -1) @ v
        t = t + self.out(a.transpose(1, 2).reshape(n, t.shape[1], -1))
        return self.head(t[:, 0])


@pytest.mark.parametrize("opset", [13, 17])
@pytest.mark.parametrize("model", [ClassToken(), ClassToken(tile=True), TinyViT()], ids=["expand", "tile", "tiny-vit"])
def test_class_token_expanded_to_a_fixed_batch_follows_the_input_batch(model, opset):
    torch.manual_seed(0)
    proto = export(model, opset, dynamic=False)
    assert any(n.op_type in ("Expand", "Tile") for n in proto.graph.node)
    assert raw_conversion_error(proto)  # batch 4 runs into the baked-in 1
    notes = check_against_onnxruntime(proto, export(model, opset, dynamic=True))
    assert "dynamic-batch" in notes["rewrites"] and "batch-1-only" not in notes


def test_model_that_only_runs_at_batch_one_is_marked_and_still_correct():
    """torchvision's ViT at a fixed batch: nn.MultiheadAttention reshapes to [tokens, batch x heads, ...],
    a batch multiplied into a middle dimension that batch-1 shapes cannot place. It runs one sample
    at a time, and its class token's Expand is still rewritten."""
    torch.manual_seed(0)
    model = torchvision.models.VisionTransformer(
        image_size=SIZE, patch_size=8, num_layers=1, num_heads=2, hidden_dim=8, mlp_dim=16, num_classes=5
    )
    nn.init.normal_(model.heads.head.weight)  # torchvision starts it at zero: no gradient to check
    proto = export(model, 17, dynamic=False)
    notes = check_against_onnxruntime(proto, export(model, 17, dynamic=True))
    assert notes.get("batch-1-only") is True
    dynamic = conversion.make_batch_dynamic(proto)
    assert [t.name for t in dynamic.graph.initializer if t.name.endswith("__target__rest")] == ["/Expand_output_0__target__rest"]


def test_load_onnx_records_the_pipeline_in_model_notes(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "twin.onnx"
    onnx.save(export(TwinConvs(), 13, dynamic=False), str(path))
    model, notes = load_onnx(path, {"mean": [0.5] * 3, "std": [0.25] * 3})
    rewrites = ["identity-initializers: 1", "dynamic-batch"]
    assert notes == {
        "softmax-removed": False,
        "converter": "onnx2pytorch",
        "rewrites": rewrites,
        "input-layout": "nchw",
        "output-index": 0,
    }
    assert model(torch.rand(4, 3, SIZE, SIZE)).shape == (4, 5)


@pytest.mark.parametrize(
    "arch, dynamic, failure",
    [
        ("squeezenet1_1", True, "takes 2 positional arguments"),
        ("mobilenet_v3_small", False, "takes 2 positional arguments"),
        ("shufflenet_v2_x0_5", False, "is invalid for input of size"),
    ],
)
def test_torchvision_architectures(arch, dynamic, failure):
    torch.manual_seed(0)
    model = trained_like(getattr(torchvision.models, arch)(weights=None, num_classes=10))
    proto = export(model, 17, dynamic=dynamic, size=32)
    assert failure in raw_conversion_error(proto, size=32)
    notes = check_against_onnxruntime(proto, export(model, 17, dynamic=True, size=32), size=32)
    assert ("dynamic-batch" in notes["rewrites"]) is not dynamic and "batch-1-only" not in notes
