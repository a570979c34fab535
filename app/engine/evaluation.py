"""The engine: one security evaluation from a normalized request to its output.

Shared by the RQ job (``app.jobs``) and the command line (``python -m app``).
The dataset is read one batch at a time, never whole, and the per-sample arrays
the size of the samples (warm-start perturbations, FMN's anchors) are row files
on disk (``rows.RowFile``), in the work directory or else a temporary one, so a
job's memory depends on its batch, not on how many samples it evaluates.
With a work directory it checkpoints after every epsilon (``.checkpoint``), and a
re-run with the same request resumes from the last finished epsilon. Each
attempt keeps its perturbations in a file of its own and asks ``owns()`` right
before every checkpoint it writes, so an attempt that lost the job (a stalled
work-horse a newer attempt replaced) never overwrites the newer one's files.
Before the attack starts, ``bounds`` checks the job's disk and memory. After the sweep, the
output gains its ``figures`` (``app.figures``, from the per-sample arrays also written to
``samples.npz``) and the reliability ``checks`` (``.checks``, on a bounded subset of samples).
With ``defenses`` the job sweeps the undefended model first, then the defended one (``.defenses.run``).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .. import samples
from ..exceptions import EvaluationError
from ..figures import figures
from ..reliability import reliable
from . import attacks, inspect_samples
from . import checks as reliability_checks
from .attacks.base import StopRequested
from .attacks.state import Hooks, SweepState
from .bounds import Limits, OutOfMemory, activation_bytes, check_disk, fit_batch
from .checkpoint import Checkpoint, always
from .convcache import ConversionCache
from .data import H5Dataset, select
from .defenses import run as defense_run
from .models import LogProbabilities, load_onnx, outputs_probabilities, pick_device
from .rows import RowFile

PER_SAMPLE_RAM = 64  # bytes: index, label, outcome, norms (and a minimal norm) per evaluated sample
PER_SAMPLE_EPSILON_RAM = 4  # bytes per evaluated sample and epsilon: the true-class confidence (float32)
SAMPLES = "samples.npz"


class SubsetSource:
    """The chosen samples of an HDF5 file, read by position in the selection."""

    def __init__(self, data: H5Dataset, indexes: np.ndarray) -> None:
        self.data, self.indexes = data, indexes

    def __len__(self) -> int:
        return len(self.indexes)

    def read(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return self.data.read(self.indexes[positions])


def sec_value(x: list[float], y: list[float]) -> float:
    """Area under the accuracy-vs-epsilon curve over [0, max epsilon], normalized to [0, 1]."""
    if len(x) < 2 or x[-1] <= 0:
        return float(y[0]) if y else 0.0
    area = sum((x[i + 1] - x[i]) * (y[i] + y[i + 1]) / 2 for i in range(len(x) - 1))
    return float(area / x[-1])


def sec_level(value: float) -> str:
    """``low`` below 1/3, ``medium`` below 2/3, ``high`` otherwise (the curve's normalized area)."""
    return "low" if value < 1 / 3 else "medium" if value < 2 / 3 else "high"


def evaluate(
    request: dict[str, Any],
    model_path: Path,
    dataset_path: Path,
    *,
    work_dir: Path | None = None,
    device: str | None = None,
    progress: Callable[[int, int], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    owns: Callable[[], bool] | None = None,
    attempt_tag: str = "local",
    limits: Limits | None = None,
    conversion_cache: ConversionCache | None = None,
) -> dict[str, Any]:
    """Run the request's attack over its epsilons and return the output (curve, accuracy, timing).

    ``owns`` is asked before every file written to ``work_dir`` (False: raise ``StopRequested``),
    ``attempt_tag`` names this attempt's own files there, ``limits`` caps disk and memory,
    ``conversion_cache`` keeps the model's conversion for the next job (``timing`` says whether it hit).
    """
    t0 = time.perf_counter()
    dev = pick_device(device)
    torch.manual_seed(request["seed"])
    # Requests stored before these fields existed ran NCHW on output 0.
    model, notes = load_onnx(
        model_path,
        request["preprocessing"] or None,
        layout=request.get("input-layout", "nchw"),
        output_index=request.get("output-index", 0),
        cache=conversion_cache,
    )
    cache_state = notes.pop("conversion-cache", None)
    t_convert = time.perf_counter()
    model = model.to(dev)
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    with H5Dataset(dataset_path) as data, contextlib.ExitStack() as scratch:
        indexes = select(data.labels, request["evaluation-mode"], request["indexes"])
        shard = request.get("shard")
        if shard:  # one shard of a sharded evaluation: its range of the selection (``app.shards``)
            indexes = indexes[shard["start"] : shard["stop"]]
        source = SubsetSource(data, indexes)
        model, notes = _check_model(model, source, data.n_classes, dev, notes)
        lb, ub = request["input-bounds"]
        fractions = request["perturbation-values"]
        epsilons = [v * (ub - lb) for v in fractions]
        defense = defense_run.plan(request, model, notes["input-layout"], (lb, ub))  # None: no defenses

        def build_attack() -> attacks.Attack:
            made = attacks.build(
                request["attack"], norm=request["norm"], params=request["attack-params"], seed=request["seed"],
                batch_size=request["batch-size"],
            )  # fmt: skip
            made.block, made.offset = request.get("shard-size", 0), shard["start"] if shard else 0
            return made

        attack = build_attack()
        rows_dir = work_dir or Path(scratch.enter_context(tempfile.TemporaryDirectory(prefix="secev-rows-")))
        attacked = defense.model if defense else model  # the batch must fit the defended model's draws
        sweeps = 2 if defense else 1
        _preflight(attack, attacked, source, data.shape, dev, rows_dir, limits or Limits(), len(epsilons), sweeps)
        checkpoint = Checkpoint(work_dir, request, attempt_tag, owns or always) if work_dir else None
        resumed = False
        if checkpoint:
            state, resumed = checkpoint.load_or_create(len(source), data.shape, len(epsilons))
        else:
            delta = RowFile.create(rows_dir / "delta.local.npy", len(source), data.shape)
            state = SweepState.empty(len(source), data.shape, len(epsilons), delta=delta)
        scratch.callback(state.close)
        t_load = time.perf_counter()
        hooks = Hooks(
            progress=progress or (lambda done, total: None),
            after_epsilon=(lambda k, st: checkpoint.save(st)) if checkpoint else (lambda k, st: None),
            should_stop=should_stop or (lambda: False),
        )
        undefended = undefended_checkpoint = None
        if defense:  # the undefended curve first, then the defended model with the attack that faces it
            factory = (lambda d, r: Checkpoint(d, r, attempt_tag, owns or always)) if checkpoint else None
            undefended, undefended_checkpoint = defense_run.undefended_sweep(
                request, build_attack, attack.batch_size, model, source, epsilons, (lb, ub), hooks, dev, data.shape,
                rows_dir, factory,
            )  # fmt: skip
            attack, model = defense_run.facing(defense, attack, model), defense.model
        try:
            state = attack.sweep(model, source, epsilons, (lb, ub), state=state, hooks=hooks, device=dev)
        except OutOfMemory:
            raise EvaluationError(
                f"out of memory on {dev.type} even with a batch of one sample; use a smaller model or input size"
            ) from None
        t_attack = time.perf_counter()
        sample_steps = attack.sample_steps  # the sweep's alone (the inspection below re-runs a few samples)
        count = request.get("inspect-samples", samples.DEFAULT_SAMPLES)
        inspection, inspection_error = inspect_samples.inspect_safely(
            attack,
            model,
            source,
            state,
            epsilons,
            fractions,
            (lb, ub),
            notes["input-layout"],
            indexes,
            count,
            dev,
            hooks.should_stop,
        )
        t_inspect = time.perf_counter()
        labels, input_dtype = data.labels[indexes], data.dtype
        accuracy = state.accuracy(len(epsilons))
        checks, probe = reliability_checks.run(
            model,
            source,
            state,
            epsilons,
            (lb, ub),
            attack,
            device=dev,
            n_classes=data.n_classes,
            notes={**notes, **({"random-defense": defense_run.random_names(defense)} if defense else {})},
            seed=request["seed"],
            noise=request["attack"] == "noise",
            accuracy=accuracy,
            should_stop=should_stop or (lambda: False),
            traces=inspection.traces if inspection else None,
        )
    arrays = {"index": indexes, "label": labels, "broken_at": state.broken_at, "norm": state.norms}
    arrays.update({name: v for name, v in (("min_norm", state.min_norm), ("true_conf", state.true_conf)) if v is not None})
    if undefended is not None:
        arrays["undefended_broken_at"] = undefended.broken_at
    value = sec_value(fractions, accuracy)
    output: dict[str, Any] = {
        "sec-curve": {"x-values": fractions, "y-values": accuracy},
        "clean-accuracy": accuracy[0],
        "sec-value": value,
        "sec-level": sec_level(value),
        "n-samples": len(indexes),
        "perturbation-type": request["perturbation-type"],
        "performance-metric": request["performance-metric"],
        "attack": {
            "name": request["attack"],
            "norm": request["norm"],
            "params": request["attack-params"],
            "repr": repr(attack),
            "epsilons-absolute": epsilons,
            "input-bounds": [lb, ub],
            # Samples are attacked as float32: a continuous attacker inside input-bounds, never re-quantized.
            "input-dtype": input_dtype,
            "preprocessing": request["preprocessing"],
            "seed": request["seed"],
            "batch-size": attack.batch_size,
            **({"batch-size-requested": request["batch-size"]} if attack.batch_size != request["batch-size"] else {}),
        },
        "figures": figures(arrays, fractions, epsilons, request["norm"], ub - lb),
        "checks": checks,
        "reliable": reliable(checks),
        "model-notes": notes,
        "device": str(dev),
        "resumed": resumed,
        "inspection": samples.summary(inspection.index if inspection else {"samples": []}, inspection_error),
        "timing": {
            "load-seconds": round(t_load - t0, 3),
            "convert-seconds": round(t_convert - t0, 3),
            **({"conversion-cache": cache_state} if cache_state else {}),
            "attack-seconds": round(t_attack - t_load, 3),
            "attack-sample-steps": sample_steps,
            "inspection-seconds": round(t_inspect - t_attack, 3),
            "checks-seconds": probe["seconds"],
            "total-seconds": round(time.perf_counter() - t0, 3),
            "torch-threads": torch.get_num_threads(),
        },
    }
    if defense:
        output.update(defense_run.output(defense, fractions, undefended, sec_value, sec_level))
    if work_dir:
        if owns is not None and not owns():
            raise StopRequested
        write_samples(work_dir, arrays)
        if inspection and not samples.write(work_dir, inspection.index, inspection.images, attempt_tag, owns or always):
            raise StopRequested
        checkpoint.finish()
        if undefended_checkpoint:
            undefended_checkpoint.finish()
            with contextlib.suppress(OSError):
                undefended_checkpoint.dir.rmdir()
        output["artifacts"] = {"per-sample": SAMPLES}
    return output


def write_samples(work_dir: Path, arrays: dict[str, np.ndarray]) -> None:
    """The per-sample artifact (``samples.npz``), written whole or not at all (a merge may re-write it)."""
    tmp = work_dir / f"{SAMPLES}.{os.getpid()}.tmp.npz"
    np.savez_compressed(tmp, **arrays)
    os.replace(tmp, work_dir / SAMPLES)


def _preflight(
    attack, model, source: SubsetSource, shape: tuple[int, ...], dev, rows_dir: Path, limits: Limits, n_eps: int = 1,
    sweeps: int = 1,
) -> None:  # fmt: skip
    """Disk for the row files (and checkpoints, of ``sweeps`` sweeps), then the largest batch (at most the
    requested one) that fits in memory."""
    n, sample_bytes = len(source), int(np.prod(shape)) * 4
    if n == 0:
        return
    rows_dir.mkdir(parents=True, exist_ok=True)
    check_disk(rows_dir, n, shape, attack.prepare_weight > 0, limits, n_eps, sweeps)
    fixed = n * (PER_SAMPLE_RAM + PER_SAMPLE_EPSILON_RAM * n_eps)  # only the small per-sample arrays stay in RAM
    x1, _ = source.read(np.arange(1))
    act = activation_bytes(model, torch.from_numpy(x1).to(dev))
    attack.batch_size = fit_batch(attack.batch_size, attack.pool_batches, sample_bytes, act, fixed, dev, limits)


def _check_model(model: torch.nn.Module, source: SubsetSource, n_classes: int, dev: torch.device, notes: dict[str, Any]):
    """One forward on a few samples: output shape vs classes, and hidden softmax outputs."""
    x, _ = source.read(np.arange(min(8, len(source))))
    try:
        with torch.no_grad():
            out = model(torch.from_numpy(x).to(dev))
    except EvaluationError:
        raise
    except Exception as exc:
        raise EvaluationError(f"the model cannot run on the dataset's samples of shape {list(x.shape[1:])}: {exc}") from None
    if out.dim() != 2:
        raise EvaluationError(
            f"the model must output one score per class (N x K or N x K x 1 x 1), got shape {list(out.shape)}; "
            "with several outputs, output-index picks the one holding the logits"
        )
    if out.shape[1] < n_classes:
        raise EvaluationError(f"the model outputs {out.shape[1]} scores but the dataset has {n_classes} classes")
    if out.shape[1] < 2:
        raise EvaluationError("the model outputs a single score; a classifier needs at least two")
    if not torch.isfinite(out).all():
        raise EvaluationError("the model outputs NaN or infinite scores on clean samples")
    if outputs_probabilities(out):
        model = LogProbabilities(model)
        notes = {**notes, "probabilities-to-log": True}
    return model, notes
