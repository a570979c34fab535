"""Validation of datasets (HDF5), and of models through ``app.onnx_inspection``.

Runs in the API process, so it uses ``onnx`` and ``h5py`` only, never torch; the
worker's reader (``app.engine.data``) imports the same checks. Each check raises
:class:`InvalidFileError` with a message that names the problem.

Every check here is bounded: nothing follows a link out of the file, no declared
shape, chunk shape, dtype or compression ratio can make it allocate more than a
few blocks of :data:`SCAN_BLOCK_BYTES`, and the walk of a file's objects stops at
:data:`MAX_H5_OBJECTS`.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple

import h5py
import numpy as np
from h5py import h5a, h5d, h5l, h5o, h5pl, h5z

from .exceptions import InvalidFileError
from .onnx_inspection import inspect_model  # noqa: F401  (one import place for both kinds)
from .schemas import channels

MAX_SAMPLES = 10_000_000
MAX_SAMPLE_ELEMENTS = 3 * 1024 * 1024  # e.g. 3 x 1024 x 1024
MAX_CLASSES = 100_000
MAX_H5_OBJECTS = 1_000  # links walked in one file; a dataset file needs a handful
MAX_CHUNK_BYTES = 16 * 2**20  # HDF5 inflates whole chunks, whatever slice is read
MAX_CHUNKS = 2**22  # per dataset: HDF5 spends 5-25 us on each, written or not (under 2 minutes)
INLINE_MAX_CHUNKS = 20_000  # chunks a request may visit (well under a second)
MAX_COMPRESSION_RATIO = 100  # inflated bytes / stored bytes; unwritten chunks count as fill
RATIO_FREE_BYTES = 64 * 2**20  # a dataset this small may compress any amount
INLINE_SCAN_BYTES = 64 * 2**20  # above this the full scan runs in a worker, not in the request
SCAN_BLOCK_BYTES = 8 * 2**20  # one read of the scan, whatever the row size
SCAN_BLOCK_CHUNKS = 4096  # and at most this many chunks, so a job's time limit interrupts it promptly

READ_ERRORS = (OSError, RuntimeError, ValueError, KeyError, TypeError)  # what h5py raises on a bad file

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
    except READ_ERRORS as exc:
        raise InvalidFileError(f"the HDF5 file's structure cannot be read: {type(exc).__name__}") from None
    if problem is not None:
        raise problem
    # With no external or user-defined link anywhere, a soft link resolves inside the file or not at all.
    for raw in soft:
        target = fh.id.links.get_val(raw).decode("utf-8", "replace")
        try:
            h5o.get_info(fh.id, raw)
        except READ_ERRORS:
            name = raw.decode("utf-8", "replace")
            raise InvalidFileError(f"soft link '{name}' points at '{target}', which is not in the file") from None


# -- HDF5: sizes, dtypes, attributes ------------------------------------------
class ScanCost(NamedTuple):
    """What a full read of some datasets costs: bytes HDF5 inflates, chunks it visits."""

    nbytes: int
    chunks: int

    def __add__(self, other: tuple[Any, ...]) -> ScanCost:
        return ScanCost(self.nbytes + other[0], self.chunks + other[1])

    def inline(self, byte_limit: int) -> bool:
        return self.nbytes <= byte_limit and self.chunks <= INLINE_MAX_CHUNKS


def _scan_cost(name: str, ds: h5py.Dataset) -> ScanCost:
    """Bytes and chunks a full read costs, refusing chunk shapes, chunk counts and compression
    ratios that would make a small file inflate into gigabytes or take minutes to walk.

    HDF5 inflates whole chunks, so a chunked dataset costs its chunk grid (every chunk it
    touches, at full size), not its declared shape; unwritten chunks read as fill, for free on disk.
    """
    itemsize = ds.dtype.itemsize
    dcpl = ds.id.get_create_plist()
    if dcpl.get_layout() != h5d.CHUNKED:
        cost = ScanCost(math.prod(ds.shape) * itemsize, 1)
    else:
        chunk = dcpl.get_chunk()
        chunk_bytes = math.prod(chunk) * itemsize
        if chunk_bytes > MAX_CHUNK_BYTES:
            raise InvalidFileError(
                f"'{name}' has chunks of {chunk_bytes / 2**20:.0f} MiB uncompressed; the limit is {MAX_CHUNK_BYTES // 2**20} MiB",
                details={"chunk-shape": [int(c) for c in chunk]},
            )
        chunks = math.prod(-(-s // c) for s, c in zip(ds.shape, chunk))
        if chunks > MAX_CHUNKS:
            raise InvalidFileError(
                f"'{name}' is split into {chunks} chunks; the limit is {MAX_CHUNKS} (use larger chunks)",
                details={"chunk-shape": [int(c) for c in chunk]},
            )
        cost = ScanCost(chunks * chunk_bytes, chunks)
    if cost.nbytes > RATIO_FREE_BYTES or cost.chunks > INLINE_MAX_CHUNKS:
        stored = ds.id.get_storage_size()
        if cost.nbytes > MAX_COMPRESSION_RATIO * stored:
            raise InvalidFileError(
                f"'{name}' declares {cost.nbytes / 2**20:.0f} MiB but stores {stored} bytes: a compression ratio above "
                f"{MAX_COMPRESSION_RATIO} (or unwritten chunks) is not accepted",
                details={"declared-bytes": cost.nbytes, "stored-bytes": int(stored)},
            )
    return cost


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


def samples_dtype_ok(dtype: np.dtype) -> bool:
    """Floats up to 64 bits, or integers every value of which float32 holds exactly (up to 16 bits):
    the evaluation converts samples to float32, and an integer dataset (uint8 images) keeps its scale."""
    return (dtype.kind == "f" and dtype.itemsize <= 8) or (dtype.kind in "iu" and dtype.itemsize <= 2)


def checked_arrays(fh: h5py.File) -> tuple[h5py.Dataset, h5py.Dataset, ScanCost]:
    """``samples`` and ``labels`` after every metadata check, and what reading them all costs.
    Reads no data."""
    check_h5_structure(fh)
    for name in ("samples", "labels"):
        if name not in fh:
            raise InvalidFileError(f"HDF5 file has no '{name}' dataset", details={"found": sorted(fh.keys())[:50]})
        if not isinstance(fh[name], h5py.Dataset):
            raise InvalidFileError(f"'{name}' is a group, not a dataset")
    samples, labels = fh["samples"], fh["labels"]
    if not samples_dtype_ok(samples.dtype):
        raise InvalidFileError(
            f"'samples' must hold floats (16, 32 or 64 bits) or integers of up to 16 bits, not {samples.dtype}"
        )
    if samples.ndim != 4:
        raise InvalidFileError(
            f"'samples' must be N x C x H x W (or N x H x W x C for a channels-last model), got shape {list(samples.shape)}"
        )
    n = samples.shape[0]
    if n == 0:
        raise InvalidFileError("'samples' is empty")
    if n > MAX_SAMPLES or math.prod(samples.shape[1:]) > MAX_SAMPLE_ELEMENTS or 0 in samples.shape:
        raise InvalidFileError(f"'samples' shape {list(samples.shape)} exceeds the size limits")
    if labels.dtype.kind not in "iuf" or labels.dtype.itemsize > 8 or labels.ndim not in (1, 2):
        raise InvalidFileError(f"'labels' must be N integers or N x K one-hot, got {labels.dtype} {list(labels.shape)}")
    if labels.shape[0] != n:
        raise InvalidFileError(f"{n} samples but {labels.shape[0]} labels")
    if labels.ndim == 2 and not 1 < labels.shape[1] <= MAX_CLASSES:
        raise InvalidFileError(f"one-hot labels with {labels.shape[1]} columns")
    band = (labels.chunks[0] if labels.chunks else 1) * math.prod(labels.shape[1:]) * labels.dtype.itemsize
    if band > MAX_CHUNK_BYTES:  # whole label rows are read at once: a band of chunk rows must stay small
        raise InvalidFileError(
            f"'labels' chunks span {band / 2**20:.0f} MiB of whole rows; the limit is {MAX_CHUNK_BYTES // 2**20} MiB"
        )
    return samples, labels, _scan_cost("samples", samples) + _scan_cost("labels", labels)


# -- HDF5: reading in bounded blocks ------------------------------------------
def _tiles(ds: h5py.Dataset, *, whole_rows: bool = False) -> Iterator[tuple[slice, ...]]:
    """Slices covering ``ds`` in blocks of about :data:`SCAN_BLOCK_BYTES`, aligned to its chunks
    so that HDF5 inflates every chunk once (a read that cuts a chunk inflates all of it).
    A block is never smaller than one chunk; with ``whole_rows`` it spans whole rows."""
    shape = ds.shape
    unit = [min(c, s) for c, s in zip(ds.chunks or (1,) * ds.ndim, shape)]
    if whole_rows:
        unit[1:] = shape[1:]
    block, size, units = list(unit), math.prod(unit) * ds.dtype.itemsize, 1
    for axis in reversed(range(ds.ndim)):
        # Grow the trailing axes first, by whole units, while the block stays within budget.
        times = max(1, min(SCAN_BLOCK_BYTES // max(1, size), SCAN_BLOCK_CHUNKS // units))
        grown = min(shape[axis], unit[axis] * times)
        size = size // unit[axis] * grown
        units *= -(-grown // unit[axis])
        block[axis] = grown
        if grown < shape[axis]:
            break
    for corner in itertools.product(*(range(0, s, b) for s, b in zip(shape, block))):
        yield tuple(slice(c, min(c + b, s)) for c, b, s in zip(corner, block, shape))


def _read(ds: h5py.Dataset, name: str, where: tuple[slice, ...]) -> np.ndarray:
    try:
        return ds[where]
    except READ_ERRORS as exc:  # a corrupt chunk, a lying index (a job's timeout must pass through)
        rows = f"rows {where[0].start}..{where[0].stop - 1}"
        raise InvalidFileError(f"'{name}' cannot be read ({rows}): {type(exc).__name__}") from None


def _label_vector(block: np.ndarray) -> np.ndarray:
    if block.ndim == 1:
        if not np.all(np.isfinite(block)) or not np.all(block == np.round(block)):
            raise InvalidFileError("labels must be integers")
        return block.astype(np.int64)
    if not np.all(np.isin(block, (0, 1))) or not np.all(block.sum(axis=1) == 1):
        raise InvalidFileError("labels of shape N x K must be one-hot rows (one 1, the rest 0)")
    return block.argmax(axis=1).astype(np.int64)


def label_blocks(labels: h5py.Dataset) -> Iterator[tuple[int, np.ndarray]]:
    """``(first row, class indexes)`` for consecutive bands of whole rows of ``labels``, checked."""
    for where in _tiles(labels, whole_rows=True):
        yield where[0].start, _label_vector(_read(labels, "labels", where))


def read_labels(labels: h5py.Dataset) -> np.ndarray:
    """All labels as class indexes, read in bounded blocks (the result is 8 bytes per sample)."""
    out = np.empty(labels.shape[0], dtype=np.int64)
    for start, block in label_blocks(labels):
        out[start : start + len(block)] = block
    return out


def scan_arrays(samples: h5py.Dataset, labels: h5py.Dataset) -> dict[str, Any]:
    """Read everything once in blocks: refuse NaN, infinite (after the float32 conversion the
    evaluation does) and negative or out-of-range labels; return value range and class count."""
    lo, hi = math.inf, -math.inf
    exact = samples.dtype.kind in "iu"  # integers of up to 16 bits: finite, and exact as float32 with no copy
    for where in _tiles(samples):
        block = _read(samples, "samples", where)
        if not exact:
            block = np.asarray(block, dtype=np.float32)
        if not exact and not np.isfinite(block).all():
            rows = f"rows {where[0].start}..{where[0].stop - 1}"
            raise InvalidFileError(f"'samples' holds NaN or infinite values as float32 ({rows})")
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

    ``samples`` must be N x C x H x W (or N x H x W x C, the model's layout) floats or integers of up
    to 16 bits (see :func:`samples_dtype_ok`), ``labels`` N integers or N x K one-hot. The file does not
    say its layout, so the result gives ``shape`` (one sample) and ``channels-by-layout``, not one channel count.
    With ``scan`` the whole file is read in blocks (see :func:`scan_arrays`); with
    ``scan_limit`` only when that costs at most that many bytes and :data:`INLINE_MAX_CHUNKS`. The
    result has ``value-range`` only when it was scanned (:func:`is_scanned`).
    """
    with open_h5(path) as fh:
        samples, labels, cost = checked_arrays(fh)
        declared = declared_classes(labels) if labels.ndim == 1 else None
        n = samples.shape[0]
        info: dict[str, Any] = {
            "n-samples": int(n),
            "shape": [int(d) for d in samples.shape[1:]],
            # Which axis holds the channels is the model's to say (its declared input, or the request's
            # input-layout), known only at submit: the file's record gives the count under either layout.
            "channels-by-layout": {layout: channels(samples.shape[1:], layout) for layout in ("nchw", "nhwc")},
            "label-format": "one-hot" if labels.ndim == 2 else "index",
        }
        if labels.ndim == 2 or declared is not None:
            info["n-classes"] = int(labels.shape[1]) if labels.ndim == 2 else declared
        if scan and (scan_limit is None or cost.inline(scan_limit)):
            info.update(scan_arrays(samples, labels))
        return info


def is_scanned(info: dict[str, Any]) -> bool:
    return "value-range" in info
