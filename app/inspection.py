"""Validation of models (ONNX) and datasets (HDF5) before anything runs on them.

Runs in the API process, so it uses ``onnx`` and ``h5py`` only, never torch.
Each check raises :class:`InvalidFileError` with a message that names the problem.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import onnx
from onnx.external_data_helper import uses_external_data

from .exceptions import InvalidFileError

MAX_SAMPLES = 10_000_000
MAX_SAMPLE_ELEMENTS = 3 * 1024 * 1024  # e.g. 3 x 1024 x 1024
MAX_CLASSES = 100_000
SCAN_ROWS = 256


def _dims(value_info: onnx.ValueInfoProto) -> list[int | str | None]:
    shape = value_info.type.tensor_type.shape
    out: list[int | str | None] = []
    for d in shape.dim:
        if d.HasField("dim_value"):
            out.append(int(d.dim_value))
        elif d.HasField("dim_param"):
            out.append(d.dim_param)
        else:
            out.append(None)
    return out


def inspect_model(path: Path, *, allow_external_data: bool = False) -> dict[str, Any]:
    """Check an ONNX file and describe its input and output.

    External data is refused for uploads (one file is all we store); for files
    named inside the data directory it must stay beside the model.
    """
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises a zoo of types on garbage
        raise InvalidFileError(f"not a readable ONNX model: {type(exc).__name__}") from None
    if not model.graph.node:
        raise InvalidFileError("ONNX graph has no nodes")
    base = path.parent.resolve()
    for tensor in model.graph.initializer:
        if not uses_external_data(tensor):
            continue
        if not allow_external_data:
            raise InvalidFileError(
                "models with external data are not accepted on upload; save the model as one self-contained .onnx file"
            )
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (base / location).resolve()
        if Path(location).is_absolute() or ".." in Path(location).parts or not target.is_relative_to(base):
            raise InvalidFileError(f"external data location {location!r} points outside the model's folder")
    try:
        onnx.checker.check_model(str(path) if allow_external_data else model)
    except Exception as exc:
        raise InvalidFileError("ONNX checker rejected the model", details=str(exc)[:500]) from None
    initializers = {t.name for t in model.graph.initializer}
    inputs = [i for i in model.graph.input if i.name not in initializers]
    if len(inputs) != 1:
        raise InvalidFileError(f"model must have exactly one input, it has {len(inputs)}")
    if not model.graph.output:
        raise InvalidFileError("model has no output")
    try:
        inferred = onnx.shape_inference.infer_shapes(model)
        output = inferred.graph.output[0]
    except Exception:
        output = model.graph.output[0]
    ops = sorted({n.op_type for n in model.graph.node})
    last_op = model.graph.node[-1].op_type
    return {
        "input-shape": _dims(inputs[0]),
        "output-shape": _dims(output),
        "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None),
        "operators": ops,
        "ends-with-softmax": last_op in ("Softmax", "LogSoftmax"),
    }


def _label_vector(labels: h5py.Dataset, start: int, stop: int) -> np.ndarray:
    block = labels[start:stop]
    if labels.ndim == 1:
        if not np.all(np.isfinite(block)) or not np.all(block == np.round(block)):
            raise InvalidFileError("labels must be integers")
        return block.astype(np.int64)
    if not np.all(np.isin(block, (0, 1))) or not np.all(block.sum(axis=1) == 1):
        raise InvalidFileError("labels of shape N x K must be one-hot rows (one 1, the rest 0)")
    return block.argmax(axis=1).astype(np.int64)


def inspect_dataset(path: Path, *, scan: bool = True) -> dict[str, Any]:
    """Check an HDF5 dataset and describe it.

    ``samples`` must be N x C x H x W floats, ``labels`` N integers or N x K one-hot.
    With ``scan`` the whole file is read in blocks to refuse NaN or infinite
    samples and negative labels and to record the value range; it is never read whole.
    """
    try:
        fh = h5py.File(path, "r")
    except Exception as exc:
        raise InvalidFileError(f"not a readable HDF5 file: {type(exc).__name__}") from None
    with fh:
        for name in ("samples", "labels"):
            if name not in fh:
                raise InvalidFileError(f"HDF5 file has no '{name}' dataset", details={"found": sorted(fh.keys())})
            if not isinstance(fh[name], h5py.Dataset):
                raise InvalidFileError(f"'{name}' is a group, not a dataset")
        samples, labels = fh["samples"], fh["labels"]
        if samples.dtype.kind != "f":
            raise InvalidFileError(f"'samples' must hold floats, not {samples.dtype}")
        if samples.ndim != 4:
            raise InvalidFileError(f"'samples' must be N x C x H x W, got shape {list(samples.shape)}")
        n = samples.shape[0]
        if n == 0:
            raise InvalidFileError("'samples' is empty")
        if n > MAX_SAMPLES or math.prod(samples.shape[1:]) > MAX_SAMPLE_ELEMENTS:
            raise InvalidFileError(f"'samples' shape {list(samples.shape)} exceeds the size limits")
        if labels.dtype.kind not in "iuf" or labels.ndim not in (1, 2):
            raise InvalidFileError(f"'labels' must be N integers or N x K one-hot, got {labels.dtype} {list(labels.shape)}")
        if labels.shape[0] != n:
            raise InvalidFileError(f"{n} samples but {labels.shape[0]} labels")
        if labels.ndim == 2 and not 1 < labels.shape[1] <= MAX_CLASSES:
            raise InvalidFileError(f"one-hot labels with {labels.shape[1]} columns")
        info: dict[str, Any] = {
            "n-samples": int(n),
            "shape": [int(d) for d in samples.shape[1:]],
            "channels": int(samples.shape[1]),
            "label-format": "one-hot" if labels.ndim == 2 else "index",
        }
        if not scan:
            return info
        lo, hi, max_label = math.inf, -math.inf, -1
        for start in range(0, n, SCAN_ROWS):
            stop = min(n, start + SCAN_ROWS)
            block = samples[start:stop]
            if not np.all(np.isfinite(block)):
                raise InvalidFileError(f"'samples' holds NaN or infinite values (rows {start}..{stop - 1})")
            lo, hi = min(lo, float(block.min())), max(hi, float(block.max()))
            lab = _label_vector(labels, start, stop)
            if lab.min() < 0:
                raise InvalidFileError("labels must not be negative")
            max_label = max(max_label, int(lab.max()))
        if labels.ndim == 2:
            n_classes = int(labels.shape[1])
        else:
            declared = labels.attrs.get("num_classes")
            n_classes = int(declared) if declared is not None else max_label + 1
            if max_label >= n_classes:
                raise InvalidFileError(f"label {max_label} is out of range for num_classes={n_classes}")
        info.update({"n-classes": n_classes, "value-range": [lo, hi]})
        return info
