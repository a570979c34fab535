"""The minimal-norm pre-stage shared by the attacks that search each sample's smallest breaking
perturbation once, before the epsilon loop (FMN, minimal FGM): the loop then only checks each threshold."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch
from torch import nn

from .base import Attack, Context
from .geometry import Bounds
from .state import Hooks, Source, SweepState

# (ctx, x, y) -> (the perturbation found per sample, its norm; inf where the search found none)
Search = Callable[[Context, torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]


def search_minimal_norms(
    attack: Attack,
    search: Search,
    *,
    model: nn.Module,
    source: Source,
    epsilons: list[float],
    bounds: Bounds,
    state: SweepState,
    hooks: Hooks,
    device: torch.device,
) -> None:
    """Run ``search`` on every batch of samples still standing after the clean pass; its perturbations become
    ``state.anchor`` (the epsilon loop's starting points) and its norms ``state.min_norm`` (the figures'
    ``minimal-norm`` breaking perturbation)."""
    state.anchor = state.rows_like_delta("anchor")
    state.min_norm = np.full(len(state.broken_at), np.inf, dtype=np.float32)

    def run(pos: np.ndarray, x: torch.Tensor, y: torch.Tensor) -> None:
        ctx = Context(model, bounds, attack.generator(device, 0, int(pos[0])), attack.autocast, should_stop=hooks.should_stop)
        best, norms = search(ctx, x, y)
        state.anchor[pos] = best.cpu().numpy()
        state.min_norm[pos] = norms.cpu().numpy()

    attack.for_each_standing(source, state, len(epsilons), device, hooks, run)
