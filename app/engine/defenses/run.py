"""A defended evaluation inside ``evaluation.evaluate``: the defended model, the attack that faces it,
and the undefended curve measured on the same samples with the same attack.

With ``defenses`` in the request, the job runs two sweeps: first the undefended model (its own checkpoint
in ``<work_dir>/undefended``, so a resumed job skips it once done), then the defended model, which is what
the output's ``sec-curve``, figures, inspection and checks describe. Adaptive (the default): the attack
runs on the defended model (BPDA, EOT: see :mod:`app.engine.defenses`). Non-adaptive
(``defense-params.adaptive: false``): it runs on the undefended model and its perturbations are judged on
the defended one (:class:`.transfer.Transfer`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from ...defense_catalog import is_random
from ..attacks.base import Attack
from ..attacks.state import Hooks, SweepState
from ..rows import RowFile
from . import describe, wrap
from .transfer import Transfer

UNDEFENDED_DIR = "undefended"


@dataclass
class Plan:
    defenses: list[dict[str, Any]]
    options: dict[str, Any]
    model: nn.Module  # the defended model

    @property
    def adaptive(self) -> bool:
        return bool(self.options.get("adaptive", True))


def plan(request: dict[str, Any], model: nn.Module, layout: str, bounds: tuple[float, float]) -> Plan | None:
    """The defended model of a request, or None when it names no defense (stored requests from before had none)."""
    defenses = request.get("defenses") or []
    if not defenses:
        return None
    options = request.get("defense-params") or {}
    return Plan(defenses, options, wrap(model, defenses, options, bounds, layout, request["seed"]))


def facing(p: Plan, attack: Attack, undefended: nn.Module) -> Attack:
    """The attack the defended model faces: itself (adaptive) or its transfer from the undefended model."""
    return attack if p.adaptive else Transfer(attack, undefended)


def undefended_sweep(
    request: dict[str, Any],
    build_attack: Callable[[], Attack],
    batch_size: int,
    model: nn.Module,
    source,
    epsilons: list[float],
    bounds: tuple[float, float],
    hooks: Hooks,
    device,
    shape: tuple[int, ...],
    rows_dir: Path,
    checkpoint_factory: Callable[[Path, dict[str, Any]], Any] | None = None,
) -> tuple[SweepState, Any]:
    """The undefended curve: the same attack (a fresh one from ``build_attack``, at the defended sweep's
    ``batch_size``) on the bare model. ``checkpoint_factory(dir, request)`` makes its checkpoint in
    ``<rows_dir>/undefended`` (None: no work directory). Takes the first half of ``hooks.progress`` and
    leaves it the second. Returns the state and the checkpoint (to ``finish`` at the end of the job)."""
    attack = build_attack()
    attack.batch_size = batch_size
    first, hooks.progress = progress_in_halves(hooks.progress)
    mine = Hooks(first, should_stop=hooks.should_stop)
    checkpoint = None
    if checkpoint_factory is not None:
        checkpoint = checkpoint_factory(rows_dir / UNDEFENDED_DIR, {**request, "curve": "undefended"})
        state, _ = checkpoint.load_or_create(len(source), shape, len(epsilons))
        mine.after_epsilon = lambda k, st: checkpoint.save(st)
    else:
        (rows_dir / UNDEFENDED_DIR).mkdir(parents=True, exist_ok=True)
        delta = RowFile.create(rows_dir / UNDEFENDED_DIR / "delta.local.npy", len(source), shape)
        state = SweepState.empty(len(source), shape, len(epsilons), delta=delta)
    try:
        state = attack.sweep(model, source, epsilons, bounds, state=state, hooks=mine, device=device)
    finally:
        state.close()
    return state, checkpoint


def output(p: Plan, fractions: list[float], undefended: SweepState, sec_value, sec_level) -> dict[str, Any]:
    """The output's fields for a defended evaluation (``sec-curve`` itself is the defended model's)."""
    return {
        "defenses": describe(p.defenses, p.options),
        "defense-params": {
            "adaptive": p.adaptive,
            "random": is_random(p.defenses),
            **(
                {"eot-draws": p.options.get("eot-draws", 8), "prediction-draws": p.options.get("prediction-draws", 16)}
                if is_random(p.defenses)
                else {}
            ),
        },
        "undefended": undefended_block(fractions, undefended.broken_at, sec_value, sec_level),
    }


def undefended_block(fractions: list[float], broken_at, sec_value, sec_level) -> dict[str, Any]:
    """The output's ``undefended``: the bare model's curve from its per-sample outcomes (also the merge's,
    from every shard's ``undefended_broken_at``)."""
    accuracy = SweepState(broken_at, np.empty(0), np.empty(0)).accuracy(len(fractions))
    value = sec_value(fractions, accuracy)
    return {
        "sec-curve": {"x-values": fractions, "y-values": accuracy},
        "clean-accuracy": accuracy[0],
        "sec-value": value,
        "sec-level": sec_level(value),
    }


def progress_in_halves(progress):
    """Two sweeps, one progress bar: the undefended sweep fills the first half, the defended one the second."""
    return (lambda done, total: progress(done, 2 * total)), (lambda done, total: progress(total + done, 2 * total))


def random_names(p: Plan | None) -> list[str]:
    """The declared random stages (the checks do not count their randomness against the evaluation)."""
    return [d["name"] for d in p.defenses if is_random([d])] if p else []
