"""Per-sample arrays kept on disk (warm-start perturbations, minimal-norm anchors), read and written by rows.

One float32 row per sample of the evaluated selection: for 3,000 samples of 3 x 224 x 224 that is 1.8 GB,
more than a worker may hold for one job. The file is a plain ``.npy`` (``np.load`` opens it), created
sparse (unwritten rows read as zeros and take no disk), and accessed with ``pread``/``pwrite`` of the rows
one batch asks for. It is never mapped: a memory map's touched pages count in the process's resident set
and its whole size in its address space, while these reads and writes go through the page cache, which
the kernel writes back and reclaims under pressure.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np

DTYPE = np.dtype("<f4")


class RowFile:
    """An ``n x row_shape`` float32 ``.npy`` file indexed by row, with an ndarray-like ``[]`` for integer
    index arrays (the only indexing the sweep uses)."""

    def __init__(self, path: Path, fd: int, shape: tuple[int, ...], offset: int) -> None:
        self.path, self._fd, self.shape, self._offset = Path(path), fd, shape, offset
        self.row_bytes = math.prod(shape[1:]) * DTYPE.itemsize
        self.dtype = DTYPE

    @classmethod
    def create(cls, path: Path, n: int, row_shape: tuple[int, ...]) -> RowFile:
        """A new file of ``n`` zero rows (sparse: no disk is used until a row is written)."""
        shape = (n, *row_shape)
        with open(path, "wb") as fh:
            np.lib.format.write_array_header_1_0(fh, {"descr": DTYPE.str, "fortran_order": False, "shape": shape})
            offset = fh.tell()
            fh.truncate(offset + n * math.prod(row_shape) * DTYPE.itemsize)
        return cls(path, os.open(path, os.O_RDWR), shape, offset)

    @classmethod
    def open(cls, path: Path) -> RowFile:
        """An existing file written by :meth:`create` (or ``np.save`` of a C-ordered float32 array)."""
        with open(path, "rb") as fh:
            fmt = np.lib.format
            version = fmt.read_magic(fh)
            read_header = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
            shape, fortran, dtype = read_header(fh)
            offset = fh.tell()
        if fortran or np.dtype(dtype) != DTYPE:
            raise ValueError(f"{path.name} is not a C-ordered float32 array")
        return cls(path, os.open(path, os.O_RDWR), tuple(shape), offset)

    @classmethod
    def from_array(cls, path: Path, array: np.ndarray) -> RowFile:
        rows = cls.create(path, len(array), tuple(array.shape[1:]))
        rows[np.arange(len(array))] = array
        return rows

    def __len__(self) -> int:
        return self.shape[0]

    def _runs(self, positions: np.ndarray) -> list[tuple[int, int, int]]:
        """``(first row, count, where in the batch)`` for each run of consecutive rows: one syscall each."""
        pos = np.asarray(positions, dtype=np.int64).reshape(-1)
        if len(pos) and (pos.min() < 0 or pos.max() >= len(self)):
            raise IndexError(f"row index out of range for {len(self)} rows")
        breaks = np.flatnonzero(np.diff(pos) != 1) + 1
        starts = np.concatenate(([0], breaks))
        ends = np.concatenate((breaks, [len(pos)]))
        return [(int(pos[s]), int(e - s), int(s)) for s, e in zip(starts, ends) if e > s]

    def __getitem__(self, positions: np.ndarray) -> np.ndarray:
        out = np.empty((len(np.atleast_1d(positions)), *self.shape[1:]), dtype=DTYPE)
        flat = out.reshape(len(out), self.row_bytes // DTYPE.itemsize).view(np.uint8)
        for row, count, at in self._runs(positions):
            view = memoryview(flat[at : at + count]).cast("B")
            done = 0
            while done < len(view):  # a read may return less than asked (over 2 GiB, say)
                got = os.preadv(self._fd, [view[done:]], self._offset + row * self.row_bytes + done)
                if got <= 0:
                    raise OSError(f"{self.path.name} ends before row {row + count - 1}")
                done += got
        return out

    def __setitem__(self, positions: np.ndarray, values: np.ndarray) -> None:
        data = np.ascontiguousarray(values, dtype=DTYPE).reshape(len(np.atleast_1d(positions)), self.row_bytes // DTYPE.itemsize)
        for row, count, at in self._runs(positions):
            view = memoryview(data[at : at + count]).cast("B")
            done = 0
            while done < len(view):  # pwrite may write less than asked
                done += os.pwrite(self._fd, view[done:], self._offset + row * self.row_bytes + done)

    def sibling(self, kind: str) -> RowFile:
        """A new zero file of the same shape beside this one, ``<kind>.<the rest of this name>``
        (``delta.<tag>.npy`` -> ``anchor.<tag>.npy``): the minimal-norm anchors beside the perturbations."""
        rest = self.path.name.partition(".")[2]
        return RowFile.create(self.path.with_name(f"{kind}.{rest}"), len(self), self.shape[1:])

    def flush(self) -> None:
        os.fsync(self._fd)

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1

    def __del__(self) -> None:
        self.close()
