"""ONNX-level rewrites that let common exports convert to torch (onnx + numpy only, no torch).

Each rewrite fixes one way real exports break onnx2pytorch, and leaves the function the
graph computes unchanged:

- ``identity-initializers``: the TorchScript exporter deduplicates equal constant tensors
  and feeds them through ``Identity`` nodes; onnx2pytorch then passes the weight as a
  forward argument (``Conv2d.forward() takes 2 positional arguments but 3 were given``).
  The consumers are made to read the initializer directly.
- ``training-mode``: opset 15+ keeps ``training_mode=0`` on an unfolded BatchNormalization;
  0 is the default, and onnx2pytorch refuses the attribute.
- ``dynamic-batch``: a model exported at batch 1 gets a symbolic batch dimension, and
  ``Reshape`` shape constants that bake that 1 in copy the input's batch (0) instead.
  Only a leading 1 of a Reshape whose input starts with 1 at batch 1 is rewritten (found by
  shape inference), so the graph is unchanged at batch 1; the loader checks larger batches.
  An ``Expand`` or ``Tile`` that makes a tensor of leading dimension 1 later concatenated
  (on another axis) with the batch, as a ViT's class token is, gets its target taken from
  the input's batch: ``[Shape(input)[0], <its other dimensions at batch 1>]``.
- ``shape-inference``: shapes are inferred last, for the converter and for later checks.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper, shape_inference

log = logging.getLogger(__name__)

BATCH = "batch"  # the symbolic batch dimension given to a model exported at batch 1


def _subgraphs(graph: onnx.GraphProto) -> list[onnx.GraphProto]:
    """The graph and every graph nested in its nodes' attributes (If/Loop/Scan bodies)."""
    found = [graph]
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                found.extend(_subgraphs(attr.g))
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for g in attr.graphs:
                    found.extend(_subgraphs(g))
    return found


def fold_identity_initializers(model: onnx.ModelProto) -> int:
    """Remove ``Identity`` nodes whose input is an initializer; their consumers read it directly."""
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    outputs = {o.name for o in graph.output}
    alias: dict[str, str] = {}
    for node in graph.node:
        if node.op_type == "Identity" and node.input and node.input[0] in initializers and node.output[0] not in outputs:
            alias[node.output[0]] = node.input[0]
    if not alias:
        return 0
    kept = [n for n in graph.node if not (n.op_type == "Identity" and n.output[0] in alias)]
    del graph.node[:]
    graph.node.extend(kept)
    for g in _subgraphs(graph):
        for node in g.node:
            for i, name in enumerate(node.input):
                if name in alias:
                    node.input[i] = alias[name]
    return len(alias)


def drop_training_mode(model: onnx.ModelProto) -> int:
    """Remove ``training_mode=0`` (the default) from BatchNormalization nodes; a 1 is kept and refused later."""
    count = 0
    for g in _subgraphs(model.graph):
        for node in g.node:
            if node.op_type != "BatchNormalization":
                continue
            for attr in list(node.attribute):
                if attr.name == "training_mode" and attr.i == 0:
                    node.attribute.remove(attr)
                    count += 1
    return count


def infer_shapes(model: onnx.ModelProto) -> onnx.ModelProto:
    """Shape inference that never fails the load: a graph it cannot follow is returned as it was."""
    try:
        return shape_inference.infer_shapes(model, data_prop=True)
    except Exception as exc:  # onnx raises several types for graphs it cannot follow
        log.info("shape inference skipped: %s", exc)
        return model


def _leading_dim(value: onnx.ValueInfoProto) -> onnx.TensorShapeProto.Dimension | None:
    t = value.type.tensor_type
    if not value.type.HasField("tensor_type") or not t.HasField("shape") or not t.shape.dim:
        return None
    return t.shape.dim[0]


def _constants(graph: onnx.GraphProto) -> dict[str, np.ndarray]:
    """Integer tensors known before the run: initializers and Constant node outputs."""
    found = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            found[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return found


# Ops whose output has the first dimension of their first input (for any attributes).
KEEPS_FIRST_DIM = frozenset(
    "Relu Sigmoid Tanh HardSigmoid HardSwish Clip LeakyRelu Elu Selu Softplus Mish Gelu Erf Identity Dropout Cast "
    "Conv ConvTranspose BatchNormalization InstanceNormalization LayerNormalization LRN MaxPool AveragePool "
    "GlobalAveragePool GlobalMaxPool Softmax LogSoftmax".split()
)


def _attribute(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for attr in node.attribute:
        if attr.name == name:
            return helper.get_attribute_value(attr)
    return default


def _keeps_first_dim(node: onnx.NodeProto, constants: dict[str, np.ndarray]) -> bool:
    """True when the node's outputs have the first dimension of its first input."""
    if node.op_type in KEEPS_FIRST_DIM:
        return True
    if node.op_type in ("Concat", "Split"):
        return _attribute(node, "axis", 0) != 0
    if node.op_type == "Transpose":
        perm = _attribute(node, "perm", None)
        return perm is not None and perm[0] == 0
    if node.op_type == "Slice":
        axes = constants.get(node.input[3]) if len(node.input) > 3 else None
        return axes is not None and 0 not in axes.tolist()
    return False


def _leading_ones(graph: onnx.GraphProto, constants: dict[str, np.ndarray]) -> set[str]:
    """Tensors whose first dimension is 1 in the inferred shapes, or follows one that is through
    ops that keep it (shape inference gives up after a Slice whose ends are computed)."""
    ones = {v.name for v in [*graph.input, *graph.value_info] if (d := _leading_dim(v)) is not None and d.dim_value == 1}
    for node in graph.node:  # ONNX nodes are in topological order
        if node.input and node.input[0] in ones and _keeps_first_dim(node, constants):
            ones.update(o for o in node.output if o)
    return ones


def _batch_reshapes(model: onnx.ModelProto, fixed: set[str]) -> list[onnx.NodeProto]:
    """Reshapes whose constant shape (a tensor named in ``fixed``) starts with 1 where, at batch 1,
    their input starts with 1 too."""
    graph = model.graph
    constants = _constants(graph)
    ones = _leading_ones(graph, constants)
    found = []
    for node in graph.node:
        if node.op_type != "Reshape" or len(node.input) < 2 or node.input[1] not in fixed:
            continue
        shape = constants[node.input[1]]
        if _attribute(node, "allowzero", 0) and (shape == 0).any():
            continue  # its 0s mean empty dimensions, and a copied batch would be one more 0
        if shape.ndim == 1 and len(shape) and shape[0] == 1 and node.input[0] in ones:
            found.append(node)
    return found


def _static_shapes(graph: onnx.GraphProto) -> dict[str, list[int]]:
    """Fully known shapes (every dimension a number) of initializers and inferred tensors."""
    found = {t.name: [int(d) for d in t.dims] for t in graph.initializer}
    for v in [*graph.input, *graph.value_info, *graph.output]:
        t = v.type.tensor_type
        if v.type.HasField("tensor_type") and t.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else 0 for d in t.shape.dim]
            if all(d > 0 for d in dims):
                found.setdefault(v.name, dims)
    return found


# Ops that compute the small integer tensors a graph derives from shapes (Expand and Tile targets).
SHAPE_OPS = frozenset(
    "Constant Identity Slice Concat Gather Unsqueeze Squeeze Cast Equal Where Mul Add Sub Div ConstantOfShape Reshape".split()
)
MAX_FOLDED = 64  # elements: shape vectors, never weights


def _targets(graph: onnx.GraphProto) -> set[str]:
    """The target (shape or repeats) inputs of the graph's Expand and Tile nodes."""
    return {n.input[1] for n in graph.node if n.op_type in ("Expand", "Tile") and len(n.input) > 1}


def _ancestors(graph: onnx.GraphProto, names: set[str]) -> set[str]:
    """Every tensor that ``names`` are computed from (themselves included)."""
    producer = {o: n for n in graph.node for o in n.output if o}
    found, todo = set(), list(names)
    while todo:
        name = todo.pop()
        if name in found:
            continue
        found.add(name)
        if name in producer:
            todo.extend(i for i in producer[name].input if i)
    return found


def _fold_shape_values(graph: onnx.GraphProto, shapes: dict[str, list[int]]) -> dict[str, np.ndarray]:
    """The values, at batch 1, of the Expand, Tile and Reshape targets computed from constants and static
    shapes only (``Shape`` of a known shape, then the ops of :data:`SHAPE_OPS`), by onnx's reference
    evaluator; only the nodes they are computed from are evaluated."""
    from onnx.reference import ReferenceEvaluator

    reshapes = {n.input[1] for n in graph.node if n.op_type == "Reshape" and len(n.input) > 1}
    needed = _ancestors(graph, _targets(graph) | reshapes)  # a computed Reshape target can block inference too
    known = {k: v for k, v in _constants(graph).items() if v.size <= MAX_FOLDED}
    for node in graph.node:
        inputs = [i for i in node.input if i]
        if not needed.intersection(node.output):
            continue
        if node.op_type == "Shape" and inputs[0] in shapes:
            start, end = _attribute(node, "start", 0), _attribute(node, "end", None)
            known[node.output[0]] = np.array(shapes[inputs[0]], dtype=np.int64)[start:end]
        elif node.op_type in SHAPE_OPS and node.op_type != "Constant" and all(i in known for i in inputs):
            try:
                values = ReferenceEvaluator(node).run(None, {i: known[i] for i in inputs})
            except Exception:  # an op the evaluator cannot run on these values: not folded
                continue
            known.update((o, np.asarray(v)) for o, v in zip(node.output, values) if o and np.asarray(v).size <= MAX_FOLDED)
    return known


def _folded_for_analysis(model: onnx.ModelProto) -> onnx.ModelProto:
    """A copy for shape analysis at batch 1 only, where the small tensors computed from shapes are
    initializers: shape inference then follows an Expand whose target is computed (``expand(n, -1, -1)``
    exports a Where over a ConstantOfShape) and every shape after it."""
    if not _targets(model.graph):
        return model
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    known = _fold_shape_values(graph, _static_shapes(infer_shapes(copy).graph))
    present = {t.name for t in graph.initializer}
    folded = [n for n in graph.node if n.output and all(o in known for o in n.output if o) and n.op_type != "Constant"]
    for node in folded:
        graph.node.remove(node)
        for name in node.output:
            if name and name not in present:
                graph.initializer.append(numpy_helper.from_array(known[name], name))
                present.add(name)
    return copy


def _batch_expands(model: onnx.ModelProto) -> dict[str, list[int]]:
    """``Expand`` and ``Tile`` outputs of leading dimension 1 at batch 1, built from tensors that do not
    depend on the input, that a ``Concat`` on another axis joins with one that does (a ViT's class token):
    mapped to what their target becomes after the batch, the output's other dimensions (Expand) or
    the repeats (Tile), at batch 1."""
    graph = model.graph
    shapes = _static_shapes(graph)
    known = _fold_shape_values(graph, shapes)
    constants = _constants(graph)
    initializers = {t.name for t in graph.initializer}
    from_input = {v.name for v in graph.input if v.name not in initializers}
    for node in graph.node:  # topological order
        if any(i in from_input for i in node.input) and node.op_type != "Shape":
            from_input.update(o for o in node.output if o)
    found = {}
    for node in graph.node:
        if node.op_type not in ("Expand", "Tile") or len(node.input) < 2 or node.input[0] in from_input:
            continue
        data, target = shapes.get(node.input[0]), known.get(node.input[1])
        if data is None or target is None or target.ndim != 1:
            continue
        if node.op_type == "Expand":
            try:
                out = list(np.broadcast_shapes(tuple(data), tuple(int(d) for d in target)))
            except ValueError:
                continue
            rest = out[1:]
        else:
            out = [d * int(r) for d, r in zip(data, target)]
            rest = [int(r) for r in target[1:]]
        shapes[node.output[0]] = out  # an Expand then a Tile: the Tile's input shape is known now
        if not out or out[0] != 1:
            continue
        carried = {node.output[0]}
        for later in graph.node:
            joined = later.op_type == "Concat" and carried & set(later.input) and from_input & set(later.input)
            if joined and _attribute(later, "axis", 0) % len(out) != 0:
                found[node.output[0]] = rest
                break
            if later.input and later.input[0] in carried and _keeps_first_dim(later, constants):
                carried.update(o for o in later.output if o)
    return found


def _follow_batch(graph: onnx.GraphProto, expands: dict[str, list[int]], source: str) -> None:
    """Give each ``Expand``/``Tile`` in ``expands`` the target ``[Shape(source)[0], *rest]``."""
    batch = f"{source}__batch_dim"
    front = [
        helper.make_node("Shape", [source], [f"{source}__shape"], name=f"{source}__shape"),
        helper.make_node("Gather", [f"{source}__shape", f"{batch}__index"], [batch], name=batch, axis=0),
    ]
    graph.initializer.append(numpy_helper.from_array(np.array([0], dtype=np.int64), f"{batch}__index"))
    nodes = []
    for node in graph.node:
        out = node.output[0] if node.output else ""
        if out in expands:
            name = f"{out}__target"
            graph.initializer.append(numpy_helper.from_array(np.array(expands[out], dtype=np.int64), f"{name}__rest"))
            nodes.append(helper.make_node("Concat", [batch, f"{name}__rest"], [name], name=name, axis=0))
            node.input[1] = name  # the old target's nodes are left, unused
        nodes.append(node)
    del graph.node[:]
    graph.node.extend([*front, *nodes])


def make_batch_dynamic(model: onnx.ModelProto) -> onnx.ModelProto | None:
    """The model with a symbolic batch where it was fixed at 1 (None when it was not).

    A Reshape's leading 1 becomes 0, "copy the input's first dimension", only where the input's
    first dimension is 1 at batch 1: so the graph computes exactly what it did at batch 1, and at
    a larger batch the Reshape follows its input. An Expand or Tile of a constant (a class token)
    joined with the batch by a Concat takes the input's batch as its leading target dimension.
    Whether the whole graph then works per sample at batch > 1 (``nn.MultiheadAttention`` bakes
    batch x heads into a middle dimension) is for the caller to measure.
    """
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    inputs = [v for v in graph.input if v.name not in initializers]
    if not inputs or not all((d := _leading_dim(v)) is not None and d.dim_value == 1 for v in inputs):
        return None
    candidate = onnx.ModelProto()
    candidate.CopyFrom(model)
    g = candidate.graph
    inferred = infer_shapes(_folded_for_analysis(candidate))
    reshapes = {n.output[0] for n in _batch_reshapes(inferred, set(_constants(g)))}
    expands = _batch_expands(inferred)
    del g.value_info[:]  # shapes inferred at batch 1 would contradict the new symbol
    for v in [*(x for x in g.input if x.name not in initializers), *g.output]:
        dim = _leading_dim(v)
        if dim is not None:
            dim.Clear()
            dim.dim_param = BATCH
    constants = _constants(g)
    names = {t.name for t in g.initializer}
    for node in g.node:
        if node.output and node.output[0] in reshapes:
            fixed = constants[node.input[1]].astype(np.int64)
            fixed[0] = 0
            name = f"{node.input[1]}__batch"
            if name not in names:
                g.initializer.append(numpy_helper.from_array(fixed, name))
                names.add(name)
            node.input[1] = name  # a new tensor: the old constant may feed other nodes
            # Dynamo writes allowzero=1 on every Reshape; with no 0 in the shape it changed nothing,
            # and the 0 just written must mean "copy", so it goes.
            for attr in [a for a in node.attribute if a.name == "allowzero"]:
                node.attribute.remove(attr)
    if expands:
        _follow_batch(g, expands, inputs[0].name)
    return candidate


def normalize(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """Apply every rewrite; returns the model to convert and the rewrites applied, for ``model-notes``."""
    rewrites: list[str] = []
    if n := fold_identity_initializers(model):
        rewrites.append(f"identity-initializers: {n}")
    if n := drop_training_mode(model):
        rewrites.append(f"training-mode: {n}")
    dynamic = make_batch_dynamic(model)
    if dynamic is not None:
        model = dynamic
        rewrites.append("dynamic-batch")
    model = infer_shapes(model)
    return model, rewrites


def describe(model: onnx.ModelProto) -> dict[str, Any]:
    """The declared input shape (batch as None when symbolic) of the first graph input, for probes."""
    graph = model.graph
    initializers = {t.name for t in graph.initializer}
    for v in graph.input:
        if v.name in initializers:
            continue
        dims = v.type.tensor_type.shape.dim
        return {"name": v.name, "shape": [d.dim_value if d.HasField("dim_value") else None for d in dims]}
    return {"name": None, "shape": []}
