"""The attack base class: it owns the sweep over the epsilons.

The curve's semantics: a sample broken at epsilon k counts as broken at every
larger epsilon (its adversarial lies inside every larger ball), so accuracy is
non-increasing by construction. The sweep visits the epsilons from the largest
down. A sample the attack cannot break at epsilon k resisted inside a ball that
contains every smaller one, so it is not attacked again: each sample pays for at
most one failed (full-budget) attack, however many epsilons are asked for, where
an ascending sweep pays the full budget at every epsilon below the one that
breaks it. A sample broken at epsilon k + 1 is attacked at epsilon k starting
from that adversarial projected into the smaller ball (a warm start that often
succeeds at once). Every adversarial that is counted is re-checked in fp32 on
the real model, inside the input bounds and the epsilon ball. Subclasses
implement ``perturb``: one epsilon on one batch.
"""

from __future__ import annotations

import contextlib
import gc
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

import numpy as np
import torch
from torch import nn

from ..bounds import OutOfMemory, is_out_of_memory
from .geometry import Bounds, clip_to_bounds, lp_norm, project
from .state import Hooks, Source, SweepState

log = logging.getLogger(__name__)

NORMS = ("linf", "l2")


# -- verification -------------------------------------------------------------
@torch.no_grad()
def verify(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, delta: torch.Tensor, eps: float, bounds: Bounds, norm: str
) -> torch.Tensor:
    """Which perturbations really break the model: fp32, inside the bounds and the ball."""
    delta = delta.float()
    adv = x + delta
    tol = 1e-5 * max(1.0, eps)
    inside = (adv >= bounds[0] - 1e-6).flatten(1).all(1) & (adv <= bounds[1] + 1e-6).flatten(1).all(1)
    inside &= lp_norm(delta, norm) <= eps + tol
    wrong = model(adv).argmax(1) != y
    return inside & wrong


def true_probability(scores: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The softmax probability of the true class, per sample, in fp32."""
    return torch.softmax(scores.float(), 1).gather(1, y[:, None]).squeeze(1)


class StopRequested(Exception):
    """Raised inside a sweep when ``Hooks.should_stop`` says so."""


def _no_stop() -> bool:
    return False


@dataclass
class Context:
    """What every perturb call needs besides the batch."""

    model: nn.Module
    bounds: Bounds
    generator: torch.Generator
    autocast: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    should_stop: Callable[[], bool] = _no_stop
    trace: Any = None  # a ``trace.Trace`` recording each step's point (per-sample inspection); None in the sweep
    steps: int = 0  # steps taken on this batch (``check`` calls), for the worker's sample-steps throughput

    def check(self) -> None:
        """Called every step of every attack: a canceled job stops within one step."""
        self.steps += 1
        if self.should_stop():
            raise StopRequested

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """Forward for the attack's own steps: bf16 autocast on GPU when enabled."""
        ctx = (
            torch.autocast(device_type="cuda", dtype=torch.bfloat16) if self.autocast and x.is_cuda else contextlib.nullcontext()
        )
        with ctx:
            return self.model(x).float()


class Attack:
    """Base class: owns the loop over epsilons and batches; subclasses implement ``perturb``."""

    name = "attack"
    prepare_weight = 0  # how many epsilons' worth of work ``prepare`` does, for progress
    pool_batches = 1  # how many batches one ``perturb`` call receives (an attack that refills its pool takes more)
    # Blocks of the selection (``shard-size`` samples; 0: one block) that no batch straddles, and the
    # position in the whole selection of this source's first sample (a shard's start). Batches and
    # their random draws then depend only on global positions: a shard forms exactly the batches,
    # and draws exactly the numbers, that the unsharded run forms and draws for the same samples.
    block = 0
    offset = 0

    def __init__(self, *, norm: str = "linf", seed: int = 0, batch_size: int = 128, autocast: bool = True) -> None:
        if norm not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, got {norm!r}")
        self.norm = norm
        self.seed = seed
        self.batch_size = batch_size
        self.autocast = autocast
        self.sample_steps = 0  # steps x samples the sweep's batches took (``/metrics``' attack throughput)

    def params(self) -> dict[str, Any]:
        """The attack's own parameters, for ``__repr__`` and the output's ``attack`` block."""
        return {}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in {"norm": self.norm, **self.params()}.items())
        return f"{type(self).__name__}({args})"

    # One epsilon, one batch: return (delta, success) where success marks samples
    # for which delta was seen to be adversarial. The base class re-checks it.
    def perturb(
        self, ctx: Context, x: torch.Tensor, y: torch.Tensor, eps: float, init: torch.Tensor | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        raise NotImplementedError

    def generator(self, device: torch.device, k: int, first: int) -> torch.Generator:
        """Seeded by (seed, epsilon index, batch start in the whole selection): a resumed sweep, and
        a shard of it, draw the same numbers."""
        g = torch.Generator(device=device)
        g.manual_seed((self.seed * 1_000_003 + k * 10_007 + self.offset + first) % (2**63))
        return g

    def _batches(self, positions: np.ndarray, factor: int = 1) -> list[np.ndarray]:
        """Sorted ``positions`` in batches of ``batch_size * factor``, none straddling a block."""
        size = self.batch_size * factor
        if self.block > 0 and len(positions):
            # Shards start on block boundaries, so local and global block edges coincide.
            edges = np.flatnonzero(np.diff((positions + self.offset) // self.block)) + 1
            groups = np.split(positions, edges)
        else:
            groups = [positions]
        return [group[i : i + size] for group in groups for i in range(0, len(group), size)]

    def _load(self, source: Source, pos: np.ndarray, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        x, y = source.read(pos)
        xt = torch.from_numpy(np.ascontiguousarray(x)).to(device)
        if xt.is_cuda:
            xt = xt.contiguous(memory_format=torch.channels_last)
        return xt, torch.from_numpy(np.asarray(y)).to(device)

    def clean_pass(
        self, model: nn.Module, source: Source, state: SweepState, device: torch.device, hooks: Hooks, total: int
    ) -> None:
        """Epsilon 0: misclassified samples are broken before any attack."""
        done = 0
        for pos in self._batches(np.arange(len(source))):
            x, y = self._load(source, pos, device)
            with torch.no_grad():
                scores = model(x)
                wrong = (scores.argmax(1) != y).cpu().numpy()
            if state.true_conf is not None:  # every column: a sample never attacked stays at its clean point
                state.true_conf[pos] = true_probability(scores, y).cpu().numpy()[:, None]
            state.broken_at[pos[wrong]] = 0
            state.norms[pos[wrong]] = 0.0
            done += len(pos)
            hooks.progress(done, total)
            if hooks.should_stop():
                raise StopRequested

    def sweep(
        self,
        model: nn.Module,
        source: Source,
        epsilons: list[float],
        bounds: Bounds,
        *,
        state: SweepState | None = None,
        hooks: Hooks | None = None,
        device: torch.device | None = None,
    ) -> SweepState:
        """Attack every sample over the absolute ``epsilons`` (ascending from 0; visited from the largest down)."""
        if not epsilons or epsilons[0] != 0 or any(b <= a for a, b in zip(epsilons, epsilons[1:])):
            raise ValueError("epsilons must ascend strictly from 0")
        hooks = hooks or Hooks()
        device = device or next(iter(model.buffers()), torch.empty(0)).device
        n, n_eps = len(source), len(epsilons)
        if state is None:
            x0, _ = source.read(np.arange(min(1, n)))
            state = SweepState.empty(n, tuple(x0.shape[1:]), n_eps)
        total = n * (n_eps + self.prepare_weight)
        self.epsilons = list(epsilons)  # for the confidence at the smaller epsilons of a sample that resisted
        if state.next_k == 0:
            self.with_smaller_batches_on_oom(lambda: self.clean_pass(model, source, state, device, hooks, total))
            state.next_k = 1
            hooks.after_epsilon(0, state)
        if not state.prepared:
            self.with_smaller_batches_on_oom(lambda: self.prepare(model, source, epsilons, bounds, state, hooks, device))
            state.prepared = True
        # Pass p attacks epsilon index k = n_eps - p: the largest first, then downwards.
        for p in range(state.next_k, n_eps):
            k = n_eps - p
            self.with_smaller_batches_on_oom(
                partial(self._attack_epsilon, model, source, float(epsilons[k]), bounds, state, hooks, device, k, p, total)
            )
            state.next_k = p + 1
            # A pass with no candidates reports nothing from its loop: say where the sweep now stands.
            hooks.progress((p + 1 + self.prepare_weight) * n, total)
            hooks.after_epsilon(k, state)
            if hooks.should_stop():  # after the checkpoint: the pass just finished is never redone
                raise StopRequested
        return state

    def _attack_epsilon(self, model, source, eps, bounds, state, hooks, device, k, p, total) -> None:
        """One pass: every candidate at epsilon index ``k``. Re-running it after an out-of-memory
        error goes on where it stopped: the samples it broke are no longer candidates."""
        n = len(source)
        # Candidates at k: broken at the next larger epsilon (or, at the top, never broken).
        # A sample that resisted at k + 1 resisted inside a larger ball: it is not attacked again.
        candidates = np.flatnonzero(state.broken_at == k + 1)
        done = (p + 1 + self.prepare_weight) * n - len(candidates)
        for pos in self._batches(candidates, self.pool_batches):
            # Checked before a batch, and after the pass's checkpoint (in ``sweep``), not after its last
            # batch: the warm starts are rewritten in place (a row file), so a stop there would resume
            # from the previous checkpoint with this pass's deltas as its warm starts.
            if hooks.should_stop():
                raise StopRequested
            x, y = self._load(source, pos, device)
            delta, ok = self._attack_batch(model, x, y, eps, bounds, state, pos, device, k, hooks.should_stop)
            won = torch.from_numpy(ok).to(device)
            # Before the outcome is written: an out-of-memory error in its forwards redoes the whole batch.
            self._record_confidence(model, x, y, delta, won, state, pos, k, bounds)
            state.delta[pos[ok]] = delta[won].detach().cpu().numpy()
            state.broken_at[pos[ok]] = k
            state.norms[pos[ok]] = lp_norm(delta[won], self.norm).cpu().numpy()
            done += len(pos)
            hooks.progress(done, total)

    @torch.no_grad()
    def _record_confidence(self, model, x, y, delta, won, state, pos, k, bounds) -> None:
        """``state.true_conf`` at epsilon ``k`` for this batch; for the samples that resisted, also at
        every smaller epsilon (their point projected into each ball): they are never attacked there."""
        if state.true_conf is None:
            return
        delta = delta.float()
        state.true_conf[pos, k] = true_probability(model(x + delta), y).cpu().numpy()
        lost = (~won).nonzero().squeeze(1)
        if len(lost) == 0:
            return
        xs, ys, ds, rows = x[lost], y[lost], delta[lost], pos[lost.cpu().numpy()]
        for j in range(1, k):
            dj = clip_to_bounds(xs, project(ds, float(self.epsilons[j]), self.norm), bounds)
            state.true_conf[rows, j] = true_probability(model(xs + dj), ys).cpu().numpy()

    def with_smaller_batches_on_oom(self, run: Callable[[], None]) -> None:
        """Run one stage; on out-of-memory, halve the batch size and run it again (down to one sample)."""
        while True:
            try:
                run()
                return
            except Exception as exc:
                if not is_out_of_memory(exc):
                    raise
                if self.batch_size <= 1:
                    raise OutOfMemory("out of memory with a batch of one sample") from None
            # Outside the except block, so the failed attempt's tensors (held by the traceback) are freed.
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            self.batch_size = max(1, self.batch_size // 2)
            log.warning("out of memory: retrying with batch-size %d", self.batch_size)

    def _attack_batch(self, model, x, y, eps, bounds, state, pos, device, k, stop=_no_stop) -> tuple[torch.Tensor, np.ndarray]:
        """One batch at one epsilon: perturb, project, and re-check in fp32 what counts."""
        init = torch.from_numpy(np.asarray(state.delta[pos])).to(device)
        ctx = Context(model, bounds, self.generator(device, k, int(pos[0])), self.autocast, should_stop=stop)
        if state.anchor is not None:
            ctx.extra["anchor"] = torch.from_numpy(state.anchor[pos]).to(device)
        delta, claimed = self.perturb(ctx, x, y, eps, init)
        self.sample_steps += ctx.steps * len(x)
        delta = clip_to_bounds(x, project(delta.float(), eps, self.norm), bounds)
        ok = verify(model, x, y, delta, eps, bounds, self.norm)
        retry = claimed & ~ok
        if ctx.autocast and x.is_cuda and bool(retry.any()):
            # A bf16 "success" the fp32 check refused: attack those samples again in fp32.
            sub = retry.nonzero().squeeze(1)
            fp32 = Context(model, bounds, ctx.generator, False, {name: v[sub] for name, v in ctx.extra.items()}, stop)
            d2, _ = self.perturb(fp32, x[sub], y[sub], eps, delta[sub])
            self.sample_steps += fp32.steps * len(sub)
            d2 = clip_to_bounds(x[sub], project(d2.float(), eps, self.norm), bounds)
            delta[sub] = d2
            ok[sub] = verify(model, x[sub], y[sub], d2, eps, bounds, self.norm)
        return delta, ok.cpu().numpy()

    def prepare(
        self,
        model: nn.Module,
        source: Source,
        epsilons: list[float],
        bounds: Bounds,
        state: SweepState,
        hooks: Hooks,
        device: torch.device,
    ) -> None:
        """Work done once before the epsilon loop (a minimal-norm pre-stage, say)."""

    def for_each_standing(self, source: Source, state: SweepState, n_eps: int, device: torch.device, hooks: Hooks, fn) -> None:
        """Call ``fn(pos, x, y)`` on batches of the samples the clean pass left standing (a pre-stage)."""
        n = len(source)
        total = n * (n_eps + self.prepare_weight)
        standing = np.flatnonzero(state.broken_at > 0)
        done = n + (n - len(standing))
        for pos in self._batches(standing):
            x, y = self._load(source, pos, device)
            fn(pos, x, y)
            done += len(pos)
            hooks.progress(done, total)
            if hooks.should_stop():
                raise StopRequested


class Best:
    """The point each sample keeps: its first adversarial once found, else its highest-loss point."""

    def __init__(self, init: torch.Tensor) -> None:
        self.delta = init.detach().clone()
        self.loss = torch.full((len(init),), float("-inf"), device=init.device)
        self.success = torch.zeros(len(init), dtype=torch.bool, device=init.device)

    def update(self, idx: torch.Tensor, delta: torch.Tensor, loss: torch.Tensor, adv: torch.Tensor) -> None:
        """``idx`` may name a sample on several rows (one per target): a row that is adversarial wins
        over its sample's other rows, so the point kept for a broken sample is always adversarial."""
        open_ = ~self.success[idx]
        hit = torch.zeros_like(self.success)
        hit[idx[adv]] = True
        new_adv = adv & open_
        better = ~hit[idx] & open_ & (loss > self.loss[idx])
        take = new_adv | better
        self.delta[idx[take]] = delta.detach()[take].to(self.delta.dtype)
        self.loss[idx[better]] = loss[better]
        self.success[idx[new_adv]] = True

    def standing(self) -> torch.Tensor:
        return (~self.success).nonzero().squeeze(1)


def is_warm(init: torch.Tensor | None) -> bool:
    return init is not None and bool(init.abs().amax() > 0)
