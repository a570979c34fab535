"""Validation of models (ONNX) and datasets (HDF5) before anything runs on them.

Runs in the API process, so it uses ``onnx`` and ``h5py`` only, never torch; the
worker's reader (``app.engine.data``) imports the same checks. Each check raises
:class:`InvalidFileError` with a message that names the problem.

Every check here is bounded: nothing follows a link out of the file, no declared
shape, chunk shape, dtype or compression ratio can make it allocate more than a
few blocks of :data:`SCAN_BLOCK_BYTES`, and the walk of a file's objects stops at
:data:`MAX_H5_OBJECTS`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import onnx
from h5py import h5a, h5d, h5l, h5o, h5pl, h5z
from onnx.external_data_helper import uses_external_data

from .exceptions import InvalidFileError

MAX_SAMPLES = 10_000_000
MAX_SAMPLE_ELEMENTS = 3 * 1024 * 1024  # e.g. 3 x 1024 x 1024
MAX_CLASSES = 100_000
MAX_H5_OBJECTS = 1_000  # links walked in one file; a dataset file needs a handful
MAX_CHUNK_BYTES = 16 * 2**20  # HDF5 inflates whole chunks, whatever slice is read
MAX_COMPRESSION_RATIO = 100  # declared bytes / stored bytes; unwritten chunks count as fill
RATIO_FREE_BYTES = 64 * 2**20  # a dataset this small may compress any amount
INLINE_SCAN_BYTES = 64 * 2**20  # above this the full scan runs in a worker, not in the request
SCAN_BLOCK_BYTES = 8 * 2**20  # one read of the scan, whatever the row size
MAX_MODEL_NODES = 100_000
MAX_SUBGRAPH_DEPTH = 32

SAFE_FILTERS = {
    h5z.FILTER_DEFLATE: "gzip",
    h5z.FILTER_SHUFFLE: "shuffle",
    h5z.FILTER_FLETCHER32: "fletcher32",
    h5z.FILTER_SCALEOFFSET: "scaleoffset",
    h5z.FILTER_LZF: "lzf",
}
if h5z.filter_avail(h5z.FILTER_SZIP):
    SAFE_FILTERS[h5z.FILTER_SZIP] = "szip"

# An unknown filter id makes HDF5 search its plugin folders and load a shared library:
# with no folders to search, none can be loaded even if a check were missed.
while h5pl.size():
    h5pl.remove(0)


# -- ONNX ----------------------------------------------------------------------
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


# -- HDF5: what the file may contain -----------------------------------------
def open_h5(path: Path) -> h5py.File:
    """The file, opened read-only, or an :class:`InvalidFileError`."""
    try:
        return h5py.File(path, "r")
    except Exception as exc:
        raise InvalidFileError(f"not a readable HDF5 file: {type(exc).__name__}") from None


def _check_dataset_storage(name: str, dsid: h5d.DatasetID) -> None:
    """Refuse storage that lives in other files, or that needs a filter HDF5 would load as a plugin."""
    dcpl = dsid.get_create_plist()
    if dcpl.get_layout() == h5d.VIRTUAL:
        raise InvalidFileError(f"virtual dataset '{name}' maps data from other files; virtual datasets are not accepted")
    if dcpl.get_external_count():
        raise InvalidFileError(f"dataset '{name}' keeps its data in other files; external storage is not accepted")
    for i in range(dcpl.get_nfilters()):
        code = dcpl.get_filter(i)[0]
        if code not in SAFE_FILTERS:
            raise InvalidFileError(
                f"dataset '{name}' uses filter {code}, which is not one of {', '.join(SAFE_FILTERS.values())}",
                details={"filter": int(code)},
            )


def check_h5_structure(fh: h5py.File) -> None:
    """Refuse every HDF5 feature that reaches outside the file: external links, user-defined
    links, soft links that lead nowhere, external storage, virtual datasets, unknown filters.

    The walk visits links without following them (a link is looked at, never opened), and
    stops after :data:`MAX_H5_OBJECTS`, so a file with millions of groups is refused quickly.
    """
    count, soft = 0, []

    def visit(raw: bytes, info: h5l.LinkInfo) -> InvalidFileError | None:
        nonlocal count
        count += 1
        name = raw.decode("utf-8", "replace")
        if count > MAX_H5_OBJECTS:
            return InvalidFileError(f"HDF5 file holds more than {MAX_H5_OBJECTS} objects")
        if info.type == h5l.TYPE_EXTERNAL:
            return InvalidFileError(f"'{name}' is an external link to another file; external links are not accepted")
        if info.type == h5l.TYPE_SOFT:
            soft.append(raw)
        elif info.type != h5l.TYPE_HARD:
            return InvalidFileError(f"'{name}' is a user-defined link; only plain and soft links are accepted")
        elif h5o.get_info(fh.id, raw).type == h5o.TYPE_DATASET:
            try:
                _check_dataset_storage(name, h5d.open(fh.id, raw))
            except InvalidFileError as exc:
                return exc
        return None

    try:
        problem = fh.id.links.visit(visit, info=True)
    except InvalidFileError:
        raise
    except Exception as exc:
        raise InvalidFileError(f"the HDF5 file's structure cannot be read: {type(exc).__name__}") from None
    if problem is not None:
        raise problem
    # With no external or user-defined link anywhere, a soft link resolves inside the file or not at all.
    for raw in soft:
        target = fh.id.links.get_val(raw).decode("utf-8", "replace")
        try:
            h5o.get_info(fh.id, raw)
        except Exception:
            name = raw.decode("utf-8", "replace")
            raise InvalidFileError(f"soft link '{name}' points at '{target}', which is not in the file") from None


# -- HDF5: sizes, dtypes, attributes ------------------------------------------
def _declared_bytes(name: str, ds: h5py.Dataset) -> int:
    """Uncompressed size of a dataset, refusing chunks or compression ratios that would make
    a small file inflate into gigabytes."""
    nbytes = math.prod(ds.shape) * ds.dtype.itemsize
    dcpl = ds.id.get_create_plist()
    if dcpl.get_layout() == h5d.CHUNKED:
        chunk = math.prod(dcpl.get_chunk()) * ds.dtype.itemsize
        if chunk > MAX_CHUNK_BYTES:
            raise InvalidFileError(
                f"'{name}' has chunks of {chunk / 2**20:.0f} MiB uncompressed; the limit is {MAX_CHUNK_BYTES // 2**20} MiB",
                details={"chunk-shape": [int(c) for c in dcpl.get_chunk()]},
            )
    if nbytes > RATIO_FREE_BYTES:
        stored = ds.id.get_storage_size()
        if nbytes > MAX_COMPRESSION_RATIO * stored:
            raise InvalidFileError(
                f"'{name}' declares {nbytes / 2**20:.0f} MiB but stores {stored} bytes: a compression ratio above "
                f"{MAX_COMPRESSION_RATIO} (or unwritten chunks) is not accepted",
                details={"declared-bytes": nbytes, "stored-bytes": int(stored)},
            )
    return nbytes


def declared_classes(labels: h5py.Dataset) -> int | None:
    """The ``num_classes`` attribute of ``labels``, checked before it is read: one whole number
    from 2 to :data:`MAX_CLASSES`. Its type and size are looked at first, so a huge or
    text attribute is refused without reading it."""
    if not h5a.exists(labels.id, b"num_classes"):
        return None
    what = "'labels' attribute num_classes"
    attr = h5a.open(labels.id, b"num_classes")
    dtype, shape = attr.dtype, attr.shape
    if dtype.kind not in "iuf" or dtype.itemsize > 8:
        kind = "text" if dtype.kind in "SUO" else f"type {dtype}"
        raise InvalidFileError(f"{what} must be a whole number, got {kind}", details={"attribute": "num_classes"})
    if shape is None or len(shape) > 1 or math.prod(shape) != 1:
        raise InvalidFileError(f"{what} must be one number, got shape {list(shape or ())}", details={"attribute": "num_classes"})
    value = np.empty(shape, dtype)
    attr.read(value)
    number = value.reshape(()).item()
    if not math.isfinite(number) or number != int(number) or not 2 <= number <= MAX_CLASSES:
        raise InvalidFileError(
            f"{what} must be a whole number from 2 to {MAX_CLASSES}, got {number!r}", details={"attribute": "num_classes"}
        )
    return int(number)


def checked_arrays(fh: h5py.File) -> tuple[h5py.Dataset, h5py.Dataset, int]:
    """``samples`` and ``labels`` after every metadata check, and their uncompressed size in
    bytes. Reads no data beyond one attribute."""
    check_h5_structure(fh)
    for name in ("samples", "labels"):
        if name not in fh:
            raise InvalidFileError(f"HDF5 file has no '{name}' dataset", details={"found": sorted(fh.keys())[:50]})
        if not isinstance(fh[name], h5py.Dataset):
            raise InvalidFileError(f"'{name}' is a group, not a dataset")
    samples, labels = fh["samples"], fh["labels"]
    if samples.dtype.kind != "f" or samples.dtype.itemsize > 8:
        raise InvalidFileError(f"'samples' must hold floats (up to 64 bits), not {samples.dtype}")
    if samples.ndim != 4:
        raise InvalidFileError(f"'samples' must be N x C x H x W, got shape {list(samples.shape)}")
    n = samples.shape[0]
    if n == 0:
        raise InvalidFileError("'samples' is empty")
    if n > MAX_SAMPLES or math.prod(samples.shape[1:]) > MAX_SAMPLE_ELEMENTS:
        raise InvalidFileError(f"'samples' shape {list(samples.shape)} exceeds the size limits")
    if labels.dtype.kind not in "iuf" or labels.dtype.itemsize > 8 or labels.ndim not in (1, 2):
        raise InvalidFileError(f"'labels' must be N integers or N x K one-hot, got {labels.dtype} {list(labels.shape)}")
    if labels.shape[0] != n:
        raise InvalidFileError(f"{n} samples but {labels.shape[0]} labels")
    if labels.ndim == 2 and not 1 < labels.shape[1] <= MAX_CLASSES:
        raise InvalidFileError(f"one-hot labels with {labels.shape[1]} columns")
    nbytes = _declared_bytes("samples", samples) + _declared_bytes("labels", labels)
    return samples, labels, nbytes


# -- HDF5: reading in bounded blocks ------------------------------------------
def _block_rows(ds: h5py.Dataset) -> int:
    """Rows per read so that one read is about :data:`SCAN_BLOCK_BYTES`, aligned to chunks."""
    row_bytes = max(1, math.prod(ds.shape[1:]) * ds.dtype.itemsize)
    rows = max(1, SCAN_BLOCK_BYTES // row_bytes)
    chunk_rows = ds.chunks[0] if ds.chunks else 1
    return rows // chunk_rows * chunk_rows if rows >= chunk_rows else rows


def _read(ds: h5py.Dataset, name: str, start: int, stop: int) -> np.ndarray:
    try:
        return ds[start:stop]
    except Exception as exc:  # a corrupt chunk, a lying index: HDF5 raises OSError and friends
        raise InvalidFileError(f"'{name}' cannot be read (rows {start}..{stop - 1}): {type(exc).__name__}") from None


def _label_vector(block: np.ndarray) -> np.ndarray:
    if block.ndim == 1:
        if not np.all(np.isfinite(block)) or not np.all(block == np.round(block)):
            raise InvalidFileError("labels must be integers")
        return block.astype(np.int64)
    if not np.all(np.isin(block, (0, 1))) or not np.all(block.sum(axis=1) == 1):
        raise InvalidFileError("labels of shape N x K must be one-hot rows (one 1, the rest 0)")
    return block.argmax(axis=1).astype(np.int64)


def label_blocks(labels: h5py.Dataset):
    """``(start, class indexes)`` for consecutive blocks of ``labels``, checked and converted."""
    rows = _block_rows(labels)
    for start in range(0, labels.shape[0], rows):
        yield start, _label_vector(_read(labels, "labels", start, min(labels.shape[0], start + rows)))


def read_labels(labels: h5py.Dataset) -> np.ndarray:
    """All labels as class indexes, read in bounded blocks (the result is 8 bytes per sample)."""
    out = np.empty(labels.shape[0], dtype=np.int64)
    for start, block in label_blocks(labels):
        out[start : start + len(block)] = block
    return out


def scan_arrays(samples: h5py.Dataset, labels: h5py.Dataset) -> dict[str, Any]:
    """Read everything once in blocks: refuse NaN, infinite (after the float32 conversion the
    evaluation does) and negative or out-of-range labels; return value range and class count."""
    n = samples.shape[0]
    lo, hi = math.inf, -math.inf
    rows = _block_rows(samples)
    for start in range(0, n, rows):
        stop = min(n, start + rows)
        block = np.asarray(_read(samples, "samples", start, stop), dtype=np.float32)
        if not np.isfinite(block).all():
            raise InvalidFileError(f"'samples' holds NaN or infinite values as float32 (rows {start}..{stop - 1})")
        lo, hi = min(lo, float(block.min())), max(hi, float(block.max()))
        del block
    max_label = -1
    for _, lab in label_blocks(labels):
        if lab.min() < 0:
            raise InvalidFileError("labels must not be negative")
        max_label = max(max_label, int(lab.max()))
    if labels.ndim == 2:
        n_classes = int(labels.shape[1])
    else:
        declared = declared_classes(labels)
        n_classes = declared if declared is not None else max_label + 1
        if max_label >= n_classes:
            raise InvalidFileError(f"label {max_label} is out of range for num_classes={n_classes}")
    return {"n-classes": n_classes, "value-range": [lo, hi]}


def inspect_dataset(path: Path, *, scan: bool = True, scan_limit: int | None = None) -> dict[str, Any]:
    """Check an HDF5 dataset and describe it.

    ``samples`` must be N x C x H x W floats, ``labels`` N integers or N x K one-hot.
    With ``scan`` the whole file is read in blocks (see :func:`scan_arrays`); with
    ``scan_limit`` only when its uncompressed size is at most that many bytes. The
    result has ``value-range`` only when it was scanned (:func:`is_scanned`).
    """
    with open_h5(path) as fh:
        samples, labels, nbytes = checked_arrays(fh)
        declared = declared_classes(labels) if labels.ndim == 1 else None
        n = samples.shape[0]
        info: dict[str, Any] = {
            "n-samples": int(n),
            "shape": [int(d) for d in samples.shape[1:]],
            "channels": int(samples.shape[1]),
            "label-format": "one-hot" if labels.ndim == 2 else "index",
        }
        if labels.ndim == 2 or declared is not None:
            info["n-classes"] = int(labels.shape[1]) if labels.ndim == 2 else declared
        if scan and (scan_limit is None or nbytes <= scan_limit):
            info.update(scan_arrays(samples, labels))
        return info


def is_scanned(info: dict[str, Any]) -> bool:
    return "value-range" in info
