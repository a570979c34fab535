"""Per-job bounds checked before an evaluation starts: disk for its checkpoint, memory for its batch.

Disk: the warm-start perturbations live in a float32 row file of ``n_samples x sample_shape``
(twice while an attempt copies an older one's, see ``checkpoint.Checkpoint``); FMN and
``auto`` also keep a minimal-norm perturbation per sample in a second one. Not enough room (under
the free space of the data directory, less a margin, and under ``MAX_JOB_DISK_MB``) fails
the job with the numbers. Memory: one batch on the device costs about ``batch_size x``
(the attack's pool of samples + the model's activations, measured on one sample);
a batch over the budget (``MAX_JOB_MEMORY_MB``, else what the device has free) is halved
until it fits, and the output records the batch size used. An out-of-memory error during
the run halves it again (``Attack.with_smaller_batches_on_oom``).
"""

from __future__ import annotations

import math
import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..exceptions import EvaluationError

MB = 2**20
DISK_MARGIN = 256 * MB  # left free for Redis's files and the other jobs
MEMORY_SHARE = 0.8  # of the free memory one job may plan to use
MIN_ACTIVATION_FACTOR = 4  # a floor, for graphs whose ops are not modules (so not measured)


class OutOfMemory(Exception):
    """The device ran out of memory even with a batch of one sample."""


def is_out_of_memory(exc: BaseException) -> bool:
    """MemoryError (numpy included), CUDA's OutOfMemoryError, or the CPU allocator's RuntimeError."""
    if isinstance(exc, MemoryError | torch.cuda.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text or "can't allocate memory" in text)


@dataclass(frozen=True)
class Limits:
    """Per-job caps in MB; 0 means only what the machine has free counts."""

    disk_mb: int = 0
    memory_mb: int = 0


def megabytes(n: float) -> str:
    return f"{n / MB:.1f} MB"


def disk_needed(n: int, sample_shape: tuple[int, ...], minimal_norm: bool, n_eps: int = 0, sweeps: int = 1) -> int:
    """Bytes of checkpoint files one job may hold at once (``sweeps``: a defended job keeps the undefended
    sweep's checkpoint, so a resume can skip it, while the defended sweep writes its own)."""
    per_sample = math.prod(sample_shape) * 4
    perturbations = 2 * n * per_sample  # this attempt's memmap, and an older one's until the first save
    anchors = 2 * n * per_sample if minimal_norm else 0  # the same for the anchors' row file
    confidences = 2 * 4 * n * n_eps  # the true-class confidence per sample and epsilon: checkpoint, samples.npz
    return sweeps * (perturbations + anchors + 64 * n + confidences)  # per-sample outcomes, samples.npz


def check_disk(
    work_dir: Path, n: int, sample_shape: tuple[int, ...], minimal_norm: bool, limits: Limits, n_eps: int = 0, sweeps: int = 1
) -> int:
    """Raise ``EvaluationError`` naming the numbers when the job's files would not fit; returns the need.
    Row files are sparse, so this bounds what a job may come to use, not what it takes at once."""
    need = disk_needed(n, sample_shape, minimal_norm, n_eps, sweeps)
    what = f"{n} samples of shape {list(sample_shape)}" + (" in two sweeps (undefended and defended)" if sweeps > 1 else "")
    if limits.disk_mb and need > limits.disk_mb * MB:
        raise EvaluationError(
            f"not enough disk: the checkpoint of {what} needs {megabytes(need)}, over the per-job limit "
            f"of {limits.disk_mb} MB (MAX_JOB_DISK_MB); evaluate fewer samples (indexes or evaluation-mode 'fast')",
            details={"disk-needed-mb": round(need / MB, 1), "disk-limit-mb": limits.disk_mb},
        )
    free = shutil.disk_usage(work_dir).free
    if need > free - DISK_MARGIN:
        raise EvaluationError(
            f"not enough disk: the checkpoint of {what} needs {megabytes(need)} but the data directory "
            f"has {megabytes(max(free - DISK_MARGIN, 0))} free (after a {megabytes(DISK_MARGIN)} margin)",
            details={"disk-needed-mb": round(need / MB, 1), "disk-free-mb": round(free / MB, 1)},
        )
    return need


def activation_bytes(model: nn.Module, x1: torch.Tensor) -> int:
    """Bytes of the outputs of every leaf module on one sample: what a backward pass keeps."""
    total = [0]

    def count(_module, _inputs, output) -> None:
        for t in output if isinstance(output, (list, tuple)) else (output,):
            if isinstance(t, torch.Tensor):
                total[0] += t.numel() * t.element_size()

    leaves = [m for m in model.modules() if not any(True for _ in m.children())]
    handles = [m.register_forward_hook(count) for m in leaves]
    try:
        with torch.no_grad():
            model(x1)
    finally:
        for h in handles:
            h.remove()
    return max(total[0], MIN_ACTIVATION_FACTOR * x1[0].numel() * 4)


def host_available() -> int:
    """MemAvailable from /proc/meminfo (bytes); a large number where there is none."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 1 << 50


def batch_bytes(batch: int, pool: int, sample_bytes: int, act_bytes: int) -> int:
    """One batch on the device: the pool's samples, perturbations and gradients, plus activations
    kept for the backward pass and their gradients."""
    return batch * (pool * sample_bytes * 4 + sample_bytes * 8 + act_bytes * 3)


def fit_batch(
    batch: int, pool: int, sample_bytes: int, act_bytes: int, fixed_host: int, device: torch.device, limits: Limits
) -> int:
    """The largest batch size (halving from ``batch``) whose estimate fits the memory budget.

    ``fixed_host`` is memory the job holds whatever the batch (per-sample arrays in RAM).
    Raises ``EvaluationError`` when even one sample does not fit.
    """
    host = int(host_available() * MEMORY_SHARE)
    if limits.memory_mb:
        host = min(host, limits.memory_mb * MB)
    if fixed_host > host:
        raise EvaluationError(
            f"not enough memory: the per-sample arrays need {megabytes(fixed_host)} but {megabytes(host)} is "
            "available; evaluate fewer samples (indexes or evaluation-mode 'fast')",
            details={"memory-needed-mb": round(fixed_host / MB, 1), "memory-available-mb": round(host / MB, 1)},
        )
    if device.type == "cuda":
        budget = int(torch.cuda.mem_get_info(device)[0] * MEMORY_SHARE)
        if limits.memory_mb:
            budget = min(budget, limits.memory_mb * MB)
    else:
        budget = host - fixed_host
    size = batch
    while size > 1 and batch_bytes(size, pool, sample_bytes, act_bytes) > budget:
        size //= 2
    if batch_bytes(size, pool, sample_bytes, act_bytes) > budget:
        need = batch_bytes(1, pool, sample_bytes, act_bytes)
        raise EvaluationError(
            f"not enough memory: one sample needs about {megabytes(need)} on {device.type} but {megabytes(budget)} is available",
            details={"memory-needed-mb": round(need / MB, 1), "memory-available-mb": round(budget / MB, 1)},
        )
    return size
