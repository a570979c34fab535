"""Reading HDF5 datasets in batches and choosing which samples to evaluate."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ..exceptions import EvaluationError
from ..inspection import checked_arrays, declared_classes, open_h5, read_labels

FAST_SEED = 20200101  # fixed: "fast" mode must pick the same samples for every model


class H5Dataset:
    """``samples`` (N x C x H x W, or N x H x W x C for a channels-last model; floats or integers of up
    to 16 bits) and ``labels`` (N or N x K one-hot), read by index, never whole, samples as float32.

    Integer samples (uint8 images) keep their scale: the request's ``input-bounds`` say it (``[0, 255]``),
    and the attack perturbs the float32 values, a continuous attacker in the stored range.
    """

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        # The same checks as at upload (defence in depth): nothing reaching outside the file,
        # no chunk or compression ratio that inflates past a bounded read, a sane num_classes.
        self._file = open_h5(self.path)
        try:
            self.samples, labels, _ = checked_arrays(self._file)
            self.labels = read_labels(labels)
            declared = declared_classes(labels) if labels.ndim == 1 else None
        except BaseException:
            self._file.close()
            raise
        if labels.ndim == 2:
            self.n_classes = int(labels.shape[1])
        else:
            self.n_classes = declared if declared is not None else int(self.labels.max()) + 1

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def dtype(self) -> str:
        """The stored dtype of the samples (``uint8``, ``float32``...)."""
        return str(self.samples.dtype)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.samples.shape[1:])

    def read(self, indexes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Samples and labels at sorted, unique ``indexes`` (h5py needs increasing order)."""
        x = np.asarray(self.samples[indexes], dtype=np.float32)  # exact for integers of up to 16 bits
        if self.samples.dtype.kind == "f" and not np.isfinite(x).all():
            raise EvaluationError(f"the dataset holds NaN or infinite values among samples {indexes[0]}..{indexes[-1]}")
        return x, self.labels[indexes]

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> H5Dataset:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def select(labels: np.ndarray, mode: str, indexes: list[int] | None, fast_size: int = 100) -> np.ndarray:
    """Which samples to evaluate: ``indexes`` if given, else all, else a stratified subset."""
    n = len(labels)
    if indexes:
        chosen = np.asarray(indexes, dtype=np.int64)
        if chosen[-1] >= n:
            raise EvaluationError(f"index {chosen[-1]} is out of range for a dataset of {n} samples")
        return chosen
    if mode == "complete" or n <= fast_size:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(FAST_SEED)
    classes, counts = np.unique(labels, return_counts=True)
    quota = np.floor(counts / n * fast_size).astype(int)
    # Largest remainders get the samples left after flooring, so the total is exact.
    order = np.argsort(-(counts / n * fast_size - quota), kind="stable")
    quota[order[: fast_size - quota.sum()]] += 1
    picked = [rng.choice(np.flatnonzero(labels == c), size=q, replace=False) for c, q in zip(classes, quota) if q]
    return np.sort(np.concatenate(picked))
