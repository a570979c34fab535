"""Does a model convert faithfully? The one owner of that question.

The ONNX file goes through the conversion pipeline (:func:`.models.load_onnx`, the very
loader an evaluation uses), then the converted network is compared with onnxruntime (CPU)
on seeded random inputs of the declared shape, in [0, 1], raw (no preprocessing), at batch
1 and at batch 4; and the input gradients of a cross-entropy loss must be finite, since every
attack follows them. Gradients that are all zero leave the model ``ready`` with a note: such a
model (one that rounds its input, say) masks gradients, and is evaluated so that the output's
reliability checks can say so; a gradient that is not finite would put NaN into every attack
step. A model ending in a softmax is compared on its logits (the softmax is cut on both sides,
as the loader does).

Tolerance: ``max|torch - ort| <= ATOL + RTOL * max|ort|``. Two float32 implementations sum in
different orders (conv algorithms, GEMM blocking), which moves logits by about 1e-6 relative
per layer; a 50-layer network stays well under 1e-4 relative. A conversion error (a wrong
axis, padding or attribute) moves them by a sizeable part of their scale. RTOL = 1e-3 keeps
a tenfold margin over the first and sits far below the second; ATOL covers logits near 0.

The outcome is a record update: ``ready`` with ``verification`` figures, or ``unsupported``
with a ``reason`` naming the operator or the mismatch. Nothing a model does makes this
raise, except running out of time or memory, which the caller's job handling owns.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from rq.timeouts import JobTimeoutException

from ..exceptions import EvaluationError, ServiceError
from ..onnx_inspection import graph_inputs, input_shape
from .convcache import ConversionCache
from .models import load_onnx, strip_softmax

log = logging.getLogger(__name__)

ATOL, RTOL = 1e-4, 1e-3
BATCHES = (1, 4)
SEED = 0
PER_SAMPLE = "it only runs at batch 1, so it is evaluated one sample at a time (correct but slow)"
ZERO_GRADIENT = (
    "its input gradients are all zero, so gradient attacks have nothing to follow (gradient masking); "
    "it can be evaluated, and the evaluation's reliability checks will flag it"
)


class Unsupported(Exception):
    """The model cannot be evaluated faithfully; ``reason`` says why, in a user's words."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def operator_reason(message: str, converter: str = "onnx2pytorch") -> str:
    """The converter's refusal in a user's words, naming the operator when its message does."""
    found = re.search(r"op_type\s*=\s*'?(\w+)|operation_type='(\w+)'", message)
    if found:
        return f"the operator {found.group(1) or found.group(2)} is not supported by the converter ({converter})"
    return message


def _input(proto: onnx.ModelProto, shape: list[int] | None) -> tuple[list[int], np.dtype]:
    """The sample shape to probe (without the batch) and the input's dtype; a ``ValueError``
    naming the dimensions when the declared shape has symbolic ones and none was given."""
    inputs = graph_inputs(proto)
    if not inputs:
        raise Unsupported("the model has no input")
    tensor = inputs[0].type.tensor_type
    try:
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tensor.elem_type))
    except Exception:  # an undefined element type: the dataset's samples are float32
        dtype = np.dtype(np.float32)
    if shape is not None:
        return list(shape), dtype
    dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?") for d in tensor.shape.dim]
    if len(dims) < 2 or not all(isinstance(d, int) and d > 0 for d in dims[1:]):
        raise ValueError(f"input shape not fixed: {dims}")
    return [int(d) for d in dims[1:]], dtype


def _samples(sample_shape: list[int], dtype: np.dtype, batch: int) -> np.ndarray:
    """Seeded inputs as the dataset would give them: floats in [0, 1], or 0-255 for integer inputs."""
    rng = np.random.default_rng(SEED)
    if np.issubdtype(dtype, np.integer):
        return rng.integers(0, 256, size=(batch, *sample_shape)).astype(dtype)
    return rng.random((batch, *sample_shape), dtype=np.float32).astype(dtype)


def _ort_session(proto: onnx.ModelProto):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3  # its warnings are about graph optimizations, not the user's model
    try:
        return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        # onnx may write an IR version newer than this onnxruntime reads; the operators are
        # versioned by the opset, so the same graph under the older IR number means the same.
        newest = re.search(r"max supported IR version: (\d+)", str(exc))
        if newest is None or proto.ir_version <= int(newest.group(1)):
            raise Unsupported(f"onnxruntime cannot run the model to compare with: {str(exc)[:300]}") from None
        proto.ir_version = int(newest.group(1))
        return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def _reference(session, x: np.ndarray, fixed_batch: bool) -> list[np.ndarray]:
    """onnxruntime's outputs for ``x``; a model declared at batch 1 runs one sample at a time."""
    name = session.get_inputs()[0].name
    if not fixed_batch or len(x) == 1:
        try:
            return session.run(None, {name: x})
        except Exception:  # declared dynamic but baked to batch 1 inside: onnxruntime per sample then
            if len(x) == 1:
                raise
    runs = [session.run(None, {name: x[i : i + 1]}) for i in range(len(x))]
    return [np.concatenate(parts) for parts in zip(*runs)]


def _as_list(out: Any) -> list[torch.Tensor]:
    return list(out) if isinstance(out, (list, tuple)) else [out]


def _compare(ours: list[torch.Tensor], theirs: list[np.ndarray], batch: int) -> float:
    """The largest logit difference over the outputs; :class:`Unsupported` past the tolerance."""
    if len(ours) != len(theirs):
        raise Unsupported(f"the converted model has {len(ours)} outputs, onnxruntime {len(theirs)}")
    worst = 0.0
    for k, (mine, ref) in enumerate(zip(ours, theirs)):
        mine_np = mine.detach().to(torch.float64).numpy()
        ref = np.asarray(ref, dtype=np.float64)
        if mine_np.size != ref.size:
            raise Unsupported(f"output {k} has shape {list(mine_np.shape)} after conversion, {list(ref.shape)} in onnxruntime")
        if not np.isfinite(ref).all():
            continue  # nothing to compare against; the gradient check judges the model itself
        diff = float(np.max(np.abs(mine_np.reshape(ref.shape) - ref), initial=0.0))
        if not diff <= ATOL + RTOL * float(np.max(np.abs(ref), initial=0.0)):  # NaN fails too
            raise Unsupported(f"logits differ from onnxruntime by {diff:.3g} at batch {batch}")
        worst = max(worst, diff)
    return worst


def _gradient(model: torch.nn.Module, x: np.ndarray) -> str:
    """'ok'; 'zero' when the input gradients of a cross-entropy loss are all zero (masked: evaluated
    and flagged); :class:`Unsupported` when they are missing or not finite."""
    inputs = torch.from_numpy(x.astype(np.float32)).requires_grad_(True)
    logits = model(inputs)
    if not logits.is_floating_point() or logits.dim() != 2:
        raise Unsupported(f"the chosen output is not one float score per class (shape {list(logits.shape)})")
    # Aimed at the least likely class: the loss is far from saturation, so its gradient is not tiny.
    loss = torch.nn.functional.cross_entropy(logits, logits.detach().argmin(1))
    (grad,) = torch.autograd.grad(loss, inputs, allow_unused=True)
    if grad is None:
        raise Unsupported("the output does not depend on the input through differentiable operations")
    if not torch.isfinite(grad).all():
        raise Unsupported("input gradients are not finite (NaN or infinite)")
    return "ok" if grad.abs().max() > 0 else "zero"


def check(
    path: Path, sample_shape: list[int] | None = None, output_index: int = 0, cache: ConversionCache | None = None
) -> dict[str, Any]:
    """Verify the model at ``path`` on its declared input shape, or on ``sample_shape`` (a dataset's);
    converted through ``cache`` when given, so the evaluations that follow find the conversion done.

    Returns the verification figures (``skipped`` when the declared shape has symbolic sample
    dimensions and none was given); raises :class:`Unsupported` with the reason otherwise.
    """
    t0 = time.perf_counter()
    try:
        proto = onnx.load(str(path))  # external data beside the file, as the loader reads it
    except Exception as exc:
        raise Unsupported(f"cannot read the ONNX model: {type(exc).__name__}") from None
    try:
        shape, dtype = _input(proto, sample_shape)
    except ValueError as exc:
        return {"skipped": str(exc)}
    try:
        model, notes = load_onnx(path, None, output_index=output_index, cache=cache)
    except ServiceError as exc:
        raise Unsupported(operator_reason(exc.message)) from None
    except NotImplementedError as exc:  # a converter raising past the loader's own handling
        raise Unsupported(operator_reason(str(exc))) from None
    strip_softmax(proto)  # compare logits with logits, as the loader cut it
    session = _ort_session(proto)
    fixed_batch = bool(graph_inputs(proto)[0].type.tensor_type.shape.dim[0].dim_value == 1)
    diffs: dict[str, float] = {}
    with torch.no_grad():
        for batch in BATCHES:
            x = _samples(shape, dtype, batch)
            ours = _as_list(model.network(torch.from_numpy(x.astype(np.float32))))
            try:
                reference = _reference(session, x, fixed_batch)
            except Exception as exc:
                raise Unsupported(f"onnxruntime cannot run the model at batch {batch}: {str(exc)[:300]}") from None
            diffs[f"batch-{batch}"] = _compare(ours, reference, batch)
    gradient = _gradient(model, _samples(shape, dtype, BATCHES[-1]))
    figures: dict[str, Any] = {
        "max-logit-diff": diffs,
        "tolerance": f"max|diff| <= {ATOL:g} + {RTOL:g} * max|onnxruntime|",
        "input-shape": [None, *shape],
        "input-dtype": str(dtype),
        "gradient": gradient,
        "converter": notes.get("converter"),
        "rewrites": notes.get("rewrites", []),
        "softmax-removed": notes.get("softmax-removed", False),
        "batch-1-only": bool(notes.get("batch-1-only")),
    }
    notes = [PER_SAMPLE] if figures["batch-1-only"] else []
    notes += [ZERO_GRADIENT] if gradient == "zero" else []
    if notes:
        figures["note"] = "; ".join(notes)
    figures["seconds"] = round(time.perf_counter() - t0, 3)
    return figures


def verify(
    path: Path, sample_shape: list[int] | None = None, output_index: int = 0, cache: ConversionCache | None = None
) -> dict[str, Any]:
    """``{"status": "ready", "verification": ...}`` or ``{"status": "unsupported", "reason": ...}``.

    Every failure the model causes becomes ``unsupported``; only the job's time limit and
    memory exhaustion pass through, for the job's shared handling.
    """
    try:
        return {"status": "ready", "verification": check(path, sample_shape, output_index, cache)}
    except Unsupported as exc:
        return {"status": "unsupported", "reason": exc.reason}
    except (JobTimeoutException, MemoryError):
        raise
    except ServiceError as exc:
        return {"status": "unsupported", "reason": exc.message}
    except Exception as exc:  # a converted graph fails in as many ways as torch has exception types
        log.info("verification of %s failed", path, exc_info=True)
        return {"status": "unsupported", "reason": f"the converted model fails: {type(exc).__name__}: {exc}"[:500]}


def require_supported(
    path: Path, dataset_path: Path, output_index: int = 0, cache: ConversionCache | None = None
) -> dict[str, Any]:
    """Verify a model on the dataset's sample shape before an evaluation attacks it (a model
    named by path has no record, and one with symbolic input dimensions had nothing to probe at
    upload). Returns the figures; an unsupported model raises :class:`EvaluationError`."""
    from .data import H5Dataset

    with H5Dataset(dataset_path) as data:
        shape = list(data.shape)
    declared = input_shape(onnx.load(str(path), load_external_data=False))[1:]  # [] when not declared at all
    fixed_differs = any(isinstance(d, int) and d > 0 and d != n for d, n in zip(declared, shape))
    if (declared and len(declared) != len(shape)) or fixed_differs:
        raise EvaluationError(
            f"the model's input is declared as {['N', *declared]} but the dataset's samples are {shape}",
            details={"model-input": declared, "samples": shape},
        )
    outcome = verify(path, shape, output_index, cache)
    if outcome["status"] != "ready":
        raise EvaluationError(
            f"the model is unsupported: {outcome['reason']}", details={"status": "unsupported", "reason": outcome["reason"]}
        )
    return outcome["verification"]
