"""Validation of ONNX models before anything runs on them.

Runs in the API process (``onnx`` only, never torch). The external-data rule covers
every tensor a model holds, wherever it sits, and absurd models are refused before
``onnx.checker`` or shape inference spend time on them. Each check raises
:class:`InvalidFileError` with a message that names the problem.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
from onnx.external_data_helper import uses_external_data

from .exceptions import InvalidFileError

MAX_MODEL_NODES = 100_000
MAX_SUBGRAPH_DEPTH = 32
MAX_MODEL_OUTPUTS = 1024  # each one's shape is recorded; a classifier has a handful


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


def _check_external_data(tensors: list[onnx.TensorProto], base: Path, *, allow: bool) -> None:
    for tensor in tensors:
        if not (uses_external_data(tensor) or len(tensor.external_data)):
            continue
        if not allow:
            raise InvalidFileError(
                f"models with external data are not accepted on upload (tensor {tensor.name!r}); "
                "save the model as one self-contained .onnx file"
            )
        location = next((e.value for e in tensor.external_data if e.key == "location"), "")
        target = (base / location).resolve()
        if not location or Path(location).is_absolute() or ".." in Path(location).parts or not target.is_relative_to(base):
            raise InvalidFileError(f"external data location {location!r} points outside the model's folder")


def inspect_model(path: Path, *, allow_external_data: bool = False) -> dict[str, Any]:
    """Check an ONNX file and describe its input and output.

    External data is refused for uploads (one file is all we store), wherever a tensor
    sits; for files named inside the data directory it must stay beside the model.
    """
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:  # protobuf raises a zoo of types on garbage
        raise InvalidFileError(f"not a readable ONNX model: {type(exc).__name__}") from None
    if not model.graph.node:
        raise InvalidFileError("ONNX graph has no nodes")
    _check_external_data(model_tensors(model), path.parent.resolve(), allow=allow_external_data)
    try:
        onnx.checker.check_model(str(path) if allow_external_data else model)
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
