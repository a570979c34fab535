"""Loading an ONNX classifier as a differentiable torch module.

Preprocessing (mean/std) lives inside the module, so attacks perturb the input
as stored in the dataset. A model that ends in a softmax is attacked on its
logits: the final Softmax node is cut off (a LogSoftmax is kept, its gradients
are fine), because probabilities saturate and their gradients vanish.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn

from ..exceptions import EvaluationError, InvalidFileError
from ..onnx_inspection import input_shape
from ..schemas import resolve_layout

log = logging.getLogger(__name__)


class Normalize(nn.Module):
    """``(x - mean) / std`` per channel, on the channel axis of the layout (1 for NCHW, 3 for NHWC)."""

    def __init__(self, mean: list[float], std: list[float], layout: str = "nchw") -> None:
        super().__init__()
        view = (1, 1, 1, -1) if layout == "nhwc" else (1, -1, 1, 1)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(view))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(view))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


class Classifier(nn.Module):
    """``preprocess -> network -> scores``, frozen: gradients flow to the input only.

    ``output_index`` picks the output holding the logits when the network has several; scores
    shaped ``[N, K, 1, 1]`` (or ``[N, 1, K]``) become ``[N, K]``. Anything else keeps its shape,
    so a map of scores (``[N, K, H, W]``) is refused by the caller, never silently flattened.
    """

    def __init__(
        self,
        network: nn.Module,
        preprocessing: dict[str, list[float]] | None = None,
        *,
        layout: str = "nchw",
        output_index: int = 0,
    ) -> None:
        super().__init__()
        self.preprocess = Normalize(**preprocessing, layout=layout) if preprocessing else nn.Identity()
        self.network = network
        self.layout, self.output_index = layout, output_index
        self.eval()
        for p in self.parameters():
            p.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.network(self.preprocess(x))
        outputs = list(out) if isinstance(out, (list, tuple)) else [out]
        if self.output_index >= len(outputs):
            raise EvaluationError(
                f"output-index {self.output_index} but the model has {len(outputs)} output(s)",
                details={"field": "output-index"},
            )
        out = outputs[self.output_index]
        if out.dim() > 2 and sum(d != 1 for d in out.shape[1:]) <= 1:
            out = out.flatten(1)
        return out


def strip_softmax(model: onnx.ModelProto) -> bool:
    """Cut a final Softmax node so the graph returns logits; True if one was cut."""
    graph = model.graph
    if not graph.node or len(graph.output) != 1:
        return False
    last = graph.node[-1]
    if last.op_type != "Softmax" or last.output[0] != graph.output[0].name:
        return False
    graph.node.remove(last)
    graph.output[0].name = last.input[0]
    return True


def load_onnx(
    path: Path, preprocessing: dict[str, list[float]] | None = None, *, layout: str = "nchw", output_index: int = 0
) -> tuple[Classifier, dict[str, Any]]:
    """Convert an ONNX file through onnx2pytorch; returns the classifier and notes about it.
    ``layout`` ``auto`` is resolved from the model's declared input shape."""
    from onnx2pytorch import ConvertModel

    try:
        proto = onnx.load(str(path))
    except Exception as exc:
        raise InvalidFileError(f"cannot read the ONNX model: {type(exc).__name__}") from None
    stripped = strip_softmax(proto)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            network = ConvertModel(proto, experimental=True)
    except NotImplementedError as exc:
        raise InvalidFileError(f"the model uses an operator the converter does not support: {exc}") from None
    except Exception as exc:
        raise InvalidFileError(f"cannot convert the ONNX model to torch: {type(exc).__name__}: {exc}") from None
    layout = resolve_layout(layout, input_shape(proto))
    classifier = Classifier(network, preprocessing, layout=layout, output_index=output_index)
    return classifier, {"softmax-removed": stripped, "input-layout": layout, "output-index": output_index}


class LogProbabilities(nn.Module):
    """Wraps a model whose outputs are probabilities, returning their logs (usable as logits)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).clamp_min(1e-30).log()


def outputs_probabilities(scores: torch.Tensor) -> bool:
    """True when every row is non-negative and sums to one: a softmax the graph hid from us."""
    if scores.numel() == 0 or scores.min() < 0:
        return False
    return bool(torch.allclose(scores.sum(1), torch.ones(len(scores), device=scores.device), atol=1e-4))


def pick_device(requested: str | None = None) -> torch.device:
    """CUDA when present (called in the work-horse, never in the RQ parent)."""
    if requested:
        return torch.device(requested)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")
