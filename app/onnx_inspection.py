"""Validation of ONNX models before anything runs on them.

Runs in the API process (``onnx`` only, never torch). The external-data rule covers
every tensor a model holds, wherever it sits, and absurd models are refused before
``onnx.checker`` or shape inference spend time on them. Each check raises
:class:`InvalidFileError` with a message that names the problem.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import onnx
from onnx.external_data_helper import uses_external_data

from .exceptions import InvalidFileError

MAX_MODEL_NODES = 100_000
MAX_SUBGRAPH_DEPTH = 32
MAX_MODEL_OUTPUTS = 1024  # each one's shape is recorded; a classifier has a handful
# Whole-byte element sizes; other types (strings, packed sub-byte types) get no length check.
ITEM_BYTES = {
    getattr(onnx.TensorProto, name): size
    for size, names in {
        1: ("UINT8", "INT8", "BOOL", "FLOAT8E4M3FN", "FLOAT8E4M3FNUZ", "FLOAT8E5M2", "FLOAT8E5M2FNUZ", "FLOAT8E8M0"),
        2: ("UINT16", "INT16", "FLOAT16", "BFLOAT16"),
        4: ("FLOAT", "INT32", "UINT32"),
        8: ("INT64", "UINT64", "DOUBLE", "COMPLEX64"),
        16: ("COMPLEX128",),
    }.items()
    for name in names
    if hasattr(onnx.TensorProto, name)
}


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


def graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """The graph's real inputs (an initializer listed among the inputs is a constant, not one)."""
    initializers = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in initializers]


def input_shape(model: onnx.ModelProto) -> list[int | str | None]:
    """The first real input's declared shape (ints, symbolic names, None where unknown)."""
    inputs = graph_inputs(model)
    return _dims(inputs[0]) if inputs else []


def _sparse_parts(sparse: onnx.SparseTensorProto) -> list[onnx.TensorProto]:
    return [sparse.values, sparse.indices]


def model_tensors(model: onnx.ModelProto) -> list[onnx.TensorProto]:
    """Every tensor the model holds: initializers, sparse initializers, Constant-node and other
    attributes (``t``, ``tensors``, ``sparse_tensor(s)``), in the main graph, in every subgraph
    (If/Loop/Scan ``g``/``graphs``) and in local functions. Refuses absurd models (too many nodes,
    subgraphs nested too deep) before the checker or shape inference get to spend time on them."""
    tensors: list[onnx.TensorProto] = []
    nodes = 0
    pending: list[tuple[Any, int]] = [(model.graph, 0), *((fn, 0) for fn in model.functions)]
    while pending:
        graph, depth = pending.pop()
        if depth > MAX_SUBGRAPH_DEPTH:
            raise InvalidFileError(f"ONNX subgraphs are nested more than {MAX_SUBGRAPH_DEPTH} levels deep")
        if isinstance(graph, onnx.GraphProto):
            tensors.extend(graph.initializer)
            for sparse in graph.sparse_initializer:
                tensors.extend(_sparse_parts(sparse))
        for node in graph.node:
            nodes += 1
            if nodes > MAX_MODEL_NODES:
                raise InvalidFileError(f"ONNX model has more than {MAX_MODEL_NODES} nodes")
            for attr in node.attribute:
                if attr.HasField("t"):
                    tensors.append(attr.t)
                tensors.extend(attr.tensors)
                sparse_list = [attr.sparse_tensor] if attr.HasField("sparse_tensor") else []
                for sparse in [*sparse_list, *attr.sparse_tensors]:
                    tensors.extend(_sparse_parts(sparse))
                if attr.HasField("g"):
                    pending.append((attr.g, depth + 1))
                pending.extend((g, depth + 1) for g in attr.graphs)
    return tensors


def _expected_bytes(tensor: onnx.TensorProto) -> int | None:
    """How many bytes the tensor's dims and type call for; None where that is not a whole-byte type."""
    size = ITEM_BYTES.get(tensor.data_type)
    return None if size is None else math.prod(tensor.dims) * size


def _int_entry(tensor: onnx.TensorProto, key: str) -> int | None:
    raw = next((e.value for e in tensor.external_data if e.key == key), None)
    if raw is None:
        return None
    if not raw.isdigit():
        raise InvalidFileError(f"external data of tensor {tensor.name!r}: {key} {raw!r} is not a non-negative integer")
    return int(raw)


def _check_span(tensor: onnx.TensorProto, location: str, file_size: int) -> None:
    """The tensor's bytes must lie inside its data file and be exactly as many as its shape calls for,
    so that loading it can neither read past the file nor be handed a tensor of another size."""
    offset = _int_entry(tensor, "offset") or 0
    length = _int_entry(tensor, "length")
    span = file_size - offset if length is None else length
    if offset + span > file_size or span < 0:
        raise InvalidFileError(
            f"external data of tensor {tensor.name!r} lies beyond the end of {location!r}",
            details={"location": location, "offset": offset, "length": length, "file-size": file_size},
        )
    expected = _expected_bytes(tensor)
    if expected is not None and span != expected:
        raise InvalidFileError(
            f"external data of tensor {tensor.name!r} holds {span} bytes, its shape and type call for {expected}",
            details={"location": location, "length": span, "expected": expected},
        )


def _check_external_data(tensors: list[onnx.TensorProto], base: Path, *, allow: bool, uploaded: set[str] | None) -> bool:
    """Every location must name a regular file beside the model (one of ``uploaded`` when given,
    each of which must be used), and every span must lie inside it. True if any tensor is external."""
    used: set[str] = set()
    for tensor in tensors:
        if not (uses_external_data(tensor) or len(tensor.external_data)):
            continue
        if not allow:
            raise InvalidFileError(
                f"models with external data need their data file uploaded with them (tensor {tensor.name!r}): "
                "send it in the multipart field 'external-data', or both files in one .zip"
            )
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (base / location).resolve()
        if not location or Path(location).is_absolute() or ".." in Path(location).parts or not target.is_relative_to(base):
            raise InvalidFileError(f"external data location {location!r} points outside the model's folder")
        if uploaded is not None and location not in uploaded:
            raise InvalidFileError(
                f"external data location {location!r} names a file that was not uploaded with the model",
                details={"location": location, "uploaded": sorted(uploaded)},
            )
        if (base / location).is_symlink() or not target.is_file():
            raise InvalidFileError(f"external data location {location!r} is not a regular file beside the model")
        _check_span(tensor, location, target.stat().st_size)
        used.add(location)
    if uploaded is not None and uploaded - used:
        unused = sorted(uploaded - used)
        raise InvalidFileError(f"uploaded data file(s) the model never references: {unused}", details={"unused": unused})
    return bool(used)


def inspect_model(path: Path, *, allow_external_data: bool = False, uploaded: set[str] | None = None) -> dict[str, Any]:
    """Check an ONNX file and describe its input and output.

    External data is only read from files beside the model: for an upload, from the data
    files uploaded with it (``uploaded``, their names; each must be used); for files named
    inside the data directory (``allow_external_data``), from any file in its folder. The
    data itself is never loaded here: the checker runs on the graph, locations and spans
    are checked against the data files' sizes.
    """
    allow = allow_external_data or uploaded is not None
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises a zoo of types on garbage
        raise InvalidFileError(f"not a readable ONNX model: {type(exc).__name__}") from None
    if not model.graph.node:
        raise InvalidFileError("ONNX graph has no nodes")
    external = _check_external_data(model_tensors(model), path.parent.resolve(), allow=allow, uploaded=uploaded)
    try:
        # Given a proto, the checker looks for external files relative to the working directory;
        # given the path, beside the model (it checks they exist, and does not read them).
        onnx.checker.check_model(str(path) if external else model)
    except Exception as exc:
        raise InvalidFileError("ONNX checker rejected the model", details=str(exc)[:500]) from None
    inputs = graph_inputs(model)
    if len(inputs) != 1:
        raise InvalidFileError(f"model must have exactly one input, it has {len(inputs)}")
    if not model.graph.output:
        raise InvalidFileError("model has no output")
    if len(model.graph.output) > MAX_MODEL_OUTPUTS:
        raise InvalidFileError(f"model has {len(model.graph.output)} outputs; the limit is {MAX_MODEL_OUTPUTS}")
    try:
        outputs = list(onnx.shape_inference.infer_shapes(model).graph.output)
    except Exception:
        outputs = list(model.graph.output)
    ops = sorted({n.op_type for n in model.graph.node})
    last_op = model.graph.node[-1].op_type
    return {
        "input-shape": _dims(inputs[0]),
        "output-shape": _dims(outputs[0]),
        "output-shapes": [_dims(o) for o in outputs],  # in the graph's order: what output-index picks from
        "opset": max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=None),
        "operators": ops,
        "ends-with-softmax": last_op in ("Softmax", "LogSoftmax"),
    }
