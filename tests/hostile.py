"""Builders of hostile HDF5 and ONNX files (issue 7, classes 1, 3, 5 and 9), shared by the tests.

Each builder writes a real file with h5py or onnx; ``HDF5_CASES`` and ``ONNX_CASES`` list
them with the phrase the refusal must contain.
"""

from __future__ import annotations

import zlib
from pathlib import Path

import h5py
import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

GOOD = np.random.default_rng(0).random((8, 1, 8, 8), dtype=np.float32)
LABELS = np.arange(8) % 10


def _good_labels(f: h5py.File, **attrs) -> None:
    ds = f.create_dataset("labels", data=LABELS)
    for k, v in attrs.items():
        ds.attrs[k] = v


def _plain(path: Path, **attrs) -> Path:
    with h5py.File(path, "w") as f:
        f.create_dataset("samples", data=GOOD)
        _good_labels(f, **attrs)
    return path


def _zeros_by_direct_chunks(f: h5py.File, name: str, shape, chunk, dtype=np.float32) -> None:
    """A chunked, gzip-compressed dataset of zeros, each chunk written pre-compressed: a
    gzip bomb that costs the test no time to build."""
    ds = f.create_dataset(name, shape=shape, chunks=chunk, dtype=dtype, compression="gzip")
    packed = zlib.compress(np.zeros(chunk, dtype).tobytes(), 9)
    grid = [range(0, s, c) for s, c in zip(shape, chunk)]
    for offset in np.array(np.meshgrid(*grid, indexing="ij")).reshape(len(shape), -1).T:
        ds.id.write_direct_chunk(tuple(int(o) for o in offset), packed)


def external_storage(path: Path) -> Path:
    with h5py.File(path, "w") as f:
        f.create_dataset("samples", shape=GOOD.shape, dtype=np.float32, external=[("/proc/self/environ", 0, GOOD.nbytes)])
        _good_labels(f)
    return path


def external_link(path: Path) -> Path:
    other = _plain(path.with_name(path.stem + "-target.h5"))
    with h5py.File(path, "w") as f:
        f["samples"] = h5py.ExternalLink(other.name, "/samples")
        _good_labels(f)
    return path


def soft_link_missing(path: Path) -> Path:
    with h5py.File(path, "w") as f:
        f.create_dataset("samples", data=GOOD)
        f["labels"] = h5py.SoftLink("/nowhere/labels")
    return path


def soft_link_to_external_link(path: Path) -> Path:
    other = _plain(path.with_name(path.stem + "-target.h5"))
    with h5py.File(path, "w") as f:
        f["hidden/away"] = h5py.ExternalLink(other.name, "/samples")
        f["samples"] = h5py.SoftLink("/hidden/away")
        _good_labels(f)
    return path


def virtual_dataset(path: Path) -> Path:
    other = _plain(path.with_name(path.stem + "-source.h5"))
    with h5py.File(path, "w") as f:
        layout = h5py.VirtualLayout(shape=GOOD.shape, dtype=np.float32)
        layout[:] = h5py.VirtualSource(other.name, "samples", shape=GOOD.shape)
        f.create_virtual_dataset("samples", layout)
        _good_labels(f)
    return path


def unknown_filter(path: Path) -> Path:
    with h5py.File(path, "w") as f:
        dcpl = h5py.h5p.create(h5py.h5p.DATASET_CREATE)
        dcpl.set_chunk((8, 1, 8, 8))
        dcpl.set_filter(307, h5py.h5z.FLAG_OPTIONAL)  # bzip2's id: HDF5 would look for it as a plugin
        space = h5py.h5s.create_simple(GOOD.shape)
        h5py.h5d.create(f.id, b"samples", h5py.h5t.NATIVE_FLOAT, space, dcpl=dcpl)
        f["samples"][...] = GOOD
        _good_labels(f)
    return path


def many_objects(path: Path) -> Path:
    with h5py.File(path, "w") as f:
        f.create_dataset("samples", data=GOOD)
        _good_labels(f)
        for i in range(1200):
            f.create_group(f"g{i // 100}/h{i}")
    return path


def gzip_bomb(path: Path) -> Path:
    """About 3 GB of zeros in a file of a few MB."""
    with h5py.File(path, "w") as f:
        _zeros_by_direct_chunks(f, "samples", (1000, 3, 512, 512), (1, 3, 512, 512))
        f.create_dataset("labels", data=np.zeros(1000, np.int64))
    return path


def float64_large_rows(path: Path) -> Path:
    """256 rows of 3 x 1024 x 1024 float64 (6 GB): the old 256-row scan block was all of it."""
    with h5py.File(path, "w") as f:
        _zeros_by_direct_chunks(f, "samples", (256, 3, 1024, 1024), (1, 1, 1024, 1024), np.float64)
        f.create_dataset("labels", data=np.zeros(256, np.int64))
    return path


def float64_inline(path: Path) -> Path:
    """Two 24 MiB float64 rows, under the inline budget: accepted, scanned in row-sized blocks."""
    with h5py.File(path, "w") as f:
        _zeros_by_direct_chunks(f, "samples", (2, 3, 1024, 1024), (1, 1, 1024, 1024), np.float64)
        f.create_dataset("labels", data=np.array([0, 1]), dtype=np.int64).attrs["num_classes"] = 10
    return path


def huge_declared_shape(path: Path) -> Path:
    """Within the count limits, nothing written: 120 GB declared, no byte stored."""
    with h5py.File(path, "w") as f:
        f.create_dataset("samples", shape=(10**7, 3, 32, 32), dtype=np.float32, chunks=(64, 3, 32, 32))
        f.create_dataset("labels", shape=(10**7,), dtype=np.int64, chunks=(4096,))
    return path


def unlimited_maxshape(path: Path) -> Path:
    with h5py.File(path, "w") as f:
        f.create_dataset("samples", shape=(10**6, 3, 64, 64), maxshape=(None, 3, 64, 64), dtype=np.float32, chunks=(8, 3, 64, 64))
        f.create_dataset("labels", shape=(10**6,), maxshape=(None,), dtype=np.int64, chunks=(4096,))
    return path


def tiny_chunks(count: int):
    """``count`` chunks of one value each, none written: cheap to declare, 5-25 us each to visit."""

    def builder(path: Path) -> Path:
        with h5py.File(path, "w") as f:
            f.create_dataset("samples", shape=(count // 1024, 1, 32, 32), dtype=np.float32, chunks=(1, 1, 1, 1))
            _good_labels_of(f, count // 1024)
        return path

    return builder


def slow_to_scan(path: Path) -> Path:
    """2M one-value chunks, 1.5% of them written: passes every metadata check (compression ratio 64)
    and goes to a worker, where walking the chunks takes tens of seconds."""
    with h5py.File(path, "w") as f:
        ds = f.create_dataset("samples", shape=(2048, 1, 32, 32), dtype=np.float32, chunks=(1, 1, 1, 1))
        ds[:32] = 0.5
        _good_labels_of(f, 2048)
    return path


def _good_labels_of(f: h5py.File, n: int) -> None:
    f.create_dataset("labels", data=np.arange(n) % 10)


def huge_chunk(path: Path) -> Path:
    with h5py.File(path, "w") as f:
        _zeros_by_direct_chunks(f, "samples", (64, 3, 256, 256), (64, 3, 256, 256))
        f.create_dataset("labels", data=np.zeros(64, np.int64))
    return path


def background_sized(path: Path) -> Path:
    """A valid dataset of 75 MiB uncompressed in a few MB: over the inline budget, under the ratio limit."""
    rng = np.random.default_rng(3)
    with h5py.File(path, "w") as f:
        samples = rng.integers(0, 2, (400, 3, 128, 128)).astype(np.float32)
        f.create_dataset("samples", data=samples, chunks=(4, 3, 128, 128), compression="gzip", shuffle=True)
        f.create_dataset("labels", data=np.arange(400) % 10).attrs["num_classes"] = 10
    return path


def num_classes(value):
    return lambda path: _plain(path, num_classes=value)


# (name, builder, phrase the 4xx must contain)
HDF5_CASES = [
    ("external storage", external_storage, "external storage"),
    ("external link", external_link, "external link"),
    ("soft link to a missing target", soft_link_missing, "not in the file"),
    ("soft link to an external link", soft_link_to_external_link, "external link"),
    ("virtual dataset", virtual_dataset, "virtual dataset"),
    ("unknown filter", unknown_filter, "filter 307"),
    ("too many objects", many_objects, "more than 1000 objects"),
    ("gzip bomb", gzip_bomb, "compression ratio"),
    ("float64 large rows", float64_large_rows, "compression ratio"),
    ("huge declared shape", huge_declared_shape, "compression ratio"),
    ("unlimited maxshape", unlimited_maxshape, "compression ratio"),
    ("huge chunk shape", huge_chunk, "chunks of 48 MiB"),
    ("millions of tiny chunks", tiny_chunks(4 * 2**20), "compression ratio"),
    ("more chunks than the cap", tiny_chunks(16 * 2**20), "split into 16777216 chunks"),
    ("num_classes text", num_classes("ten"), "num_classes must be a whole number, got text"),
    ("num_classes array", num_classes(np.array([10, 10])), "num_classes must be one number"),
    ("num_classes negative", num_classes(-3), "num_classes must be a whole number from 2"),
    ("num_classes fraction", num_classes(10.5), "got 10.5"),
    ("num_classes huge", num_classes(10**12), "num_classes must be a whole number from 2"),
]


# -- ONNX -------------------------------------------------------------------------
def _external(tensor: TensorProto, location: str) -> TensorProto:
    tensor.data_location = TensorProto.EXTERNAL
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.external_data.add(key="location", value=location)
    return tensor


def _save(path: Path, nodes, initializers=(), sparse=()) -> Path:
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])
    out = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 10])
    graph = helper.make_graph(nodes, "g", [inp], [out], initializer=list(initializers), sparse_initializer=list(sparse))
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _weight(location: str) -> TensorProto:
    return _external(numpy_helper.from_array(np.ones((64, 10), np.float32), "W"), location)


def constant_external(path: Path, location: str = "weights.bin") -> Path:
    nodes = [
        helper.make_node("Constant", [], ["W"], value=_weight(location)),
        helper.make_node("Flatten", ["input"], ["f"]),
        helper.make_node("MatMul", ["f", "W"], ["output"]),
    ]
    return _save(path, nodes)


def subgraph_external(path: Path) -> Path:
    def branch(name):
        w = helper.make_tensor_value_info("W", TensorProto.FLOAT, [64, 10])
        return helper.make_graph([helper.make_node("Constant", [], ["W"], value=_weight("weights.bin"))], name, [], [w])

    nodes = [
        helper.make_node("Constant", [], ["cond"], value=numpy_helper.from_array(np.array(True), "cond")),
        helper.make_node("If", ["cond"], ["W"], then_branch=branch("then"), else_branch=branch("else")),
        helper.make_node("Flatten", ["input"], ["f"]),
        helper.make_node("MatMul", ["f", "W"], ["output"]),
    ]
    return _save(path, nodes)


def sparse_external(path: Path) -> Path:
    values = _external(numpy_helper.from_array(np.ones(4, np.float32), "W"), "weights.bin")
    sparse = helper.make_sparse_tensor(values, numpy_helper.from_array(np.arange(4, dtype=np.int64), "i"), [64, 10])
    nodes = [helper.make_node("Flatten", ["input"], ["f"]), helper.make_node("MatMul", ["f", "W"], ["output"])]
    return _save(path, nodes, sparse=[sparse])


def too_many_nodes(path: Path) -> Path:
    nodes = [helper.make_node("Flatten", ["input"], ["t0"])]
    nodes += [helper.make_node("Identity", [f"t{i}"], [f"t{i + 1}"]) for i in range(100_001)]
    weight = numpy_helper.from_array(np.ones((64, 10), np.float32), "W")
    nodes.append(helper.make_node("MatMul", ["t100001", "W"], ["output"]))
    return _save(path, nodes, initializers=[weight])


ONNX_CASES = [
    ("Constant node with external data", constant_external, "external data"),
    ("If subgraph with external data", subgraph_external, "external data"),
    ("sparse initializer with external data", sparse_external, "external data"),
    ("more nodes than the cap", too_many_nodes, "more than 100000 nodes"),
]
