"""What a sweep reads and what it keeps: sample sources, the per-sample state a checkpoint saves, and the hooks."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from ..rows import RowFile


class Source(Protocol):
    """Anything that reads samples by position: an HDF5 subset, or tensors in memory."""

    def __len__(self) -> int: ...

    def read(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


class ArraySource:
    """In-memory samples, for tests, benchmarks and library use."""

    def __init__(self, x: np.ndarray | torch.Tensor, y: np.ndarray | torch.Tensor) -> None:
        self.x = np.asarray(x.cpu() if isinstance(x, torch.Tensor) else x, dtype=np.float32)
        self.y = np.asarray(y.cpu() if isinstance(y, torch.Tensor) else y, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.y)

    def read(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.x[positions], self.y[positions]


@dataclass
class SweepState:
    """Per-sample outcome: the first epsilon index that broke it (``len(epsilons)`` = never),
    the norm of the counted adversarial, and the current perturbation (the warm start).

    ``true_conf`` [n, n_eps] is the softmax probability of the true class at the point the attack
    returned for each epsilon: column 0 the clean input; at an epsilon where the sample was attacked,
    the point returned (its adversarial when broken); at the epsilons below the one where it resisted
    (never attacked there), that resisting point projected into each smaller ball; a sample misclassified
    clean is never attacked, so its row is its clean confidence throughout.

    The per-sample arrays the size of the samples (``delta``, ``anchor``) are ndarrays for library
    use, and :class:`RowFile` s on disk in an evaluation, so a job holds one batch of them at a time.
    """

    broken_at: np.ndarray
    norms: np.ndarray
    delta: np.ndarray | RowFile
    next_k: int = 0
    prepared: bool = False
    anchor: np.ndarray | RowFile | None = None  # a minimal-norm adversarial per sample, from a pre-stage
    min_norm: np.ndarray | None = None
    true_conf: np.ndarray | None = None

    @classmethod
    def empty(cls, n: int, sample_shape: tuple[int, ...], n_eps: int, delta: np.ndarray | None = None) -> SweepState:
        if delta is None:
            delta = np.zeros((n, *sample_shape), dtype=np.float32)
        state = cls(np.full(n, n_eps, dtype=np.int32), np.full(n, np.nan, dtype=np.float32), delta)
        state.true_conf = np.full((n, n_eps), np.nan, dtype=np.float32)
        return state

    def rows_like_delta(self, kind: str) -> np.ndarray | RowFile:
        """Zeros shaped like ``delta``, kept where it is kept (on disk, named ``kind``, beside it)."""
        return self.delta.sibling(kind) if isinstance(self.delta, RowFile) else np.zeros_like(self.delta)

    def close(self) -> None:
        """Close the row files (an ndarray needs nothing)."""
        for rows in (self.delta, self.anchor):
            if isinstance(rows, RowFile):
                rows.close()

    def accuracy(self, n_eps: int) -> list[float]:
        n = len(self.broken_at)
        return [float((self.broken_at > k).sum() / n) if n else 0.0 for k in range(n_eps)]


@dataclass
class Hooks:
    """Callbacks the sweep calls: progress, a checkpoint after each epsilon, a stop check."""

    progress: Callable[[int, int], None] = lambda done, total: None
    after_epsilon: Callable[[int, SweepState], None] = lambda k, state: None
    should_stop: Callable[[], bool] = lambda: False
