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
from ..onnx_inspection import input_shape, model_tensors
from ..schemas import resolve_layout
from . import conversion, converter
from .convcache import ConversionCache, cache_key

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


class PerSample(nn.Module):
    """Runs a network that only works at batch 1 one sample at a time: correct, but slow."""

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network

    def forward(self, x: torch.Tensor) -> Any:
        outs = [self.network(x[i : i + 1]) for i in range(len(x))]
        if isinstance(outs[0], (list, tuple)):
            return type(outs[0])(torch.cat(parts) for parts in zip(*outs))
        return torch.cat(outs)


def _first_output(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (list, tuple)) else out


def batches_work(network: nn.Module, shape: list[int | None], batch: int = 2) -> bool:
    """True when ``network`` gives each sample of a batch the logits it gives that sample alone."""
    x = torch.rand(batch, *shape[1:], generator=torch.Generator().manual_seed(0))  # leaves the global seed alone
    try:
        with torch.no_grad():
            together = _first_output(network(x))
            alone = torch.cat([_first_output(network(x[i : i + 1])) for i in range(batch)])
    except Exception as exc:  # a baked-in batch of 1 fails with shape errors of many types
        log.info("the model does not run at batch %d: %s: %s", batch, type(exc).__name__, exc)
        return False
    return together.shape == alone.shape and bool(torch.allclose(together, alone, rtol=1e-3, atol=1e-4))


def _onnx2pytorch(proto: onnx.ModelProto) -> nn.Module:
    """onnx2pytorch's module for a graph already through the rewrites; a refusal is the user's ``InvalidFileError``."""
    convert_model = converter.convert_model_class()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            network = convert_model(proto, experimental=True)
    except NotImplementedError as exc:
        raise InvalidFileError(f"the model uses an operator the converter does not support: {exc}") from None
    except Exception as exc:
        raise InvalidFileError(f"cannot convert the ONNX model to torch: {type(exc).__name__}: {exc}") from None
    return network.eval()


def _normalized(proto: onnx.ModelProto) -> tuple[nn.Module, dict[str, Any], onnx.ModelProto]:
    """:func:`convert`, also returning the rewritten graph (what the conversion cache keeps)."""
    proto, rewrites = conversion.normalize(proto)
    network = _onnx2pytorch(proto)
    notes: dict[str, Any] = {"converter": "onnx2pytorch", "rewrites": rewrites}
    shape = conversion.describe(proto)["shape"]
    if len(shape) > 1 and all(shape[1:]) and not batches_work(network, shape):
        network = PerSample(network)
        notes["batch-1-only"] = True
    return network, notes, proto


def convert(proto: onnx.ModelProto) -> tuple[nn.Module, dict[str, Any]]:
    """Normalize the graph (see :mod:`.conversion`) and convert it through onnx2pytorch.

    A network that cannot run at batch > 1 is wrapped to run one sample at a time and noted
    ``batch-1-only``; the probe needs a static input shape (apart from the batch).
    """
    network, notes, _ = _normalized(proto)
    return network, notes


def _read(path: Path) -> onnx.ModelProto:
    try:
        return onnx.load(str(path))
    except Exception as exc:
        raise InvalidFileError(f"cannot read the ONNX model: {type(exc).__name__}") from None


def _network(path: Path, cache: ConversionCache | None) -> tuple[nn.Module, dict[str, Any], list[Any]]:
    """The converted network, the loader's notes and the declared input shape; through ``cache``
    when given (then ``conversion-cache`` in the notes says ``hit``, ``miss`` or why it was ``off``)."""
    state: dict[str, str] = {}
    if cache is not None:
        try:
            data = path.read_bytes()  # hashed and parsed from this one read: the key names what runs
        except OSError as exc:
            raise InvalidFileError(f"cannot read the ONNX model: {type(exc).__name__}") from None
        key = cache_key(data)
        # No entry is ever stored for a model with external data, so a hit names bytes that hold every weight.
        entry = cache.get(key)
        loader, shape = (entry.notes.get("loader"), entry.notes.get("input-shape")) if entry else (None, None)
        if isinstance(loader, dict) and isinstance(shape, list):
            network = _onnx2pytorch(onnx.load_model_from_string(entry.graph))
            if loader.get("batch-1-only"):
                network = PerSample(network)
            return network, {**loader, "conversion-cache": "hit"}, shape
        try:
            proto = onnx.load_model_from_string(data)
        except Exception as exc:
            raise InvalidFileError(f"cannot read the ONNX model: {type(exc).__name__}") from None
        if any(t.data_location == onnx.TensorProto.EXTERNAL for t in model_tensors(proto)):
            state = {"conversion-cache": "off: external data"}  # its bytes do not name its weights
        else:
            stripped = strip_softmax(proto)
            shape = input_shape(proto)
            network, notes, rewritten = _normalized(proto)
            notes = {"softmax-removed": stripped, **notes}
            cache.put(key, rewritten.SerializeToString(), {"loader": notes, "input-shape": shape})
            return network, {**notes, "conversion-cache": "miss"}, shape
    proto = _read(path)  # external data beside the file, as onnx reads it
    stripped = strip_softmax(proto)
    network, notes = convert(proto)
    return network, {"softmax-removed": stripped, **notes, **state}, input_shape(proto)


def load_onnx(
    path: Path,
    preprocessing: dict[str, list[float]] | None = None,
    *,
    layout: str = "nchw",
    output_index: int = 0,
    cache: ConversionCache | None = None,
) -> tuple[Classifier, dict[str, Any]]:
    """Convert an ONNX file through the conversion pipeline (or take the rewritten graph from
    ``cache``); returns the classifier and notes about it. ``layout`` ``auto`` is resolved from
    the model's declared input shape."""
    network, notes, shape = _network(Path(path), cache)
    layout = resolve_layout(layout, shape)
    classifier = Classifier(network, preprocessing, layout=layout, output_index=output_index)
    return classifier, {**notes, "input-layout": layout, "output-index": output_index}


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
    """CUDA when present (called in the work-horse, never in the RQ parent). With several GPUs
    visible, the one with the most free memory now: Docker gives every replica of a scaled
    service the same devices (docker-compose.gpu.yml hands each worker all of them), so the
    jobs of ``--scale worker=N`` spread over the GPUs by themselves."""
    if requested:
        return torch.device(requested)
    if not torch.cuda.is_available():
        return torch.device("cpu")
    if torch.cuda.device_count() == 1:
        return torch.device("cuda")
    free = [torch.cuda.mem_get_info(i)[0] for i in range(torch.cuda.device_count())]
    best = free.index(max(free))
    torch.cuda.set_device(best)  # the work-horse's default too (its cache, its streams): one job per process
    return torch.device("cuda", best)
