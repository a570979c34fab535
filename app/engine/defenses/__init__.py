"""Preprocessing defenses in front of the model (``defenses`` in a request; ``app.defense_catalog`` validates).

``Defended`` wraps the classifier: its input is the attack's input space (inside ``input-bounds``, before the
model's mean/std normalisation, which lives in the classifier), and the stages run in the request's order.
Deterministic stages cross the backward pass by BPDA (see :mod:`.bpda`). With a random stage, one forward
means one of two things, chosen by whether autograd is recording (the attacks' gradient steps) or not (every
prediction that counts: the clean pass, the fp32 verification, the checks):

- attack (gradients on): expectation over transformation (Athalye et al. 2018): the mean over ``eot-draws``
  fresh draws of the log-probabilities, so the cross-entropy every gradient attack ascends is the EOT loss,
  its gradient the EOT gradient, and every built-in attack gets EOT for free. Where that mean ranks first
  another class than the prediction (the vote below), the predicted class's score is lifted (a constant, no
  gradient) just above the top: an attack judges success by the class ranked first, so it never stops at a
  point the prediction does not call adversarial, nor overlooks one it does. This costs one vote per step;
- prediction (no gradients): the majority vote over ``prediction-draws`` noise patterns drawn once from the
  request's seed and shared by every sample, so a sample's prediction is a deterministic function of its
  input (resume, shards, the fp32 re-check and the checks all agree). The scores returned are the log of each
  class's vote share (ties broken by the mean probability), so their softmax is the share of draws voting for it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ...defense_catalog import BY_NAME
from .bitdepth import BitDepth
from .bpda import Stage
from .jpeg import JpegCompression
from .median import MedianSmoothing
from .noise import GaussianNoise

STAGES: dict[str, type[Stage]] = {
    "spatial-smoothing": MedianSmoothing,
    "jpeg-compression": JpegCompression,
    "gaussian-noise": GaussianNoise,
    "bit-depth": BitDepth,
}
TIE_BREAK = 1e-3  # weight of the mean probability in the vote: it only orders classes with equal votes
REDRAW_SEED = 7_777_777  # the second pattern set's seed offset: far from any neighbouring request seed


def build_stages(defenses: list[dict[str, Any]], bounds: tuple[float, float], layout: str) -> list[Stage]:
    """The stages of a normalised ``defenses`` list, in order."""
    out = []
    for d in defenses:
        params = {k.replace("-", "_"): v for k, v in d.items() if k != "name"}
        out.append(STAGES[d["name"]](bounds, layout, **params))
    return out


class Defended(nn.Module):
    """``stages -> model``; see the module docstring for what a forward means with a random stage."""

    def __init__(self, model: nn.Module, stages: list[Stage], *, eot_draws: int = 8, prediction_draws: int = 16, seed: int = 0):
        super().__init__()
        self.model, self.stages = model, nn.ModuleList(stages)
        self.random = any(s.random for s in stages)
        self.eot_draws, self.prediction_draws, self.seed = int(eot_draws), int(prediction_draws), int(seed)
        self._eot_generator: torch.Generator | None = None
        self._patterns: dict[tuple[int, str, tuple[int, ...]], torch.Tensor] = {}

    def redrawn(self) -> Defended:
        """The same defense voting over another, independent set of ``prediction_draws`` patterns.

        The reliability checks' query attack searches against the evaluation's own patterns, and a break that
        fools only those overfits the seeds that make predictions repeatable rather than the defense."""
        return Defended(
            self.model, list(self.stages), eot_draws=self.eot_draws, prediction_draws=self.prediction_draws,
            seed=self.seed + REDRAW_SEED,
        )  # fmt: skip

    def transform(self, x: torch.Tensor, noises: list[torch.Tensor | None] | None = None) -> torch.Tensor:
        for i, stage in enumerate(self.stages):
            x = stage(x, noises[i] if noises else None)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.random:
            return self.model(self.transform(x))
        if torch.is_grad_enabled():
            return self.expectation(x)
        return self.vote(x)

    def expectation(self, x: torch.Tensor) -> torch.Tensor:
        """Mean log-probabilities over ``eot_draws`` fresh draws (one batched forward of draws x N)."""
        n, draws = len(x), self.eot_draws
        if self._eot_generator is None or self._eot_generator.device != x.device:
            self._eot_generator = torch.Generator(device=x.device)
            self._eot_generator.manual_seed(self.seed * 7_919 + 17)
        rep = x.repeat(draws, *([1] * (x.dim() - 1)))
        noises = [
            torch.randn(rep.shape, generator=self._eot_generator, device=x.device, dtype=torch.float32) if s.random else None
            for s in self.stages
        ]
        scores = torch.log_softmax(self.model(self.transform(rep, noises)).float(), 1).view(draws, n, -1).mean(0)
        with torch.no_grad():  # the class ranked first must be the prediction's (the vote), never the draws' estimate of it
            voted = self.vote(x.detach()).argmax(1)
            gap = (scores.amax(1) - scores.gather(1, voted[:, None]).squeeze(1)).clamp_min(0)
            lift = torch.where(gap > 0, gap + 1e-3, gap)
        return scores + nn.functional.one_hot(voted, scores.shape[1]).to(scores.dtype) * lift[:, None]

    def patterns(self, index: int, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
        """Stage ``index``'s ``prediction_draws`` noise patterns for samples of ``shape`` (seeded, made once)."""
        key = (index, str(device), shape)
        if key not in self._patterns:
            g = torch.Generator().manual_seed(self.seed * 1_000_003 + 104_729 * (index + 1))
            self._patterns[key] = torch.randn((self.prediction_draws, *shape), generator=g).to(device)
        return self._patterns[key]

    def vote(self, x: torch.Tensor) -> torch.Tensor:
        """Log vote shares over the seeded patterns (one batched forward of draws x N)."""
        n, draws = len(x), self.prediction_draws
        rep = x.repeat(draws, *([1] * (x.dim() - 1)))
        noises = []
        for i, s in enumerate(self.stages):
            if s.random:
                p = self.patterns(i, tuple(x.shape[1:]), x.device)
                noises.append(p[:, None].expand(draws, n, *x.shape[1:]).reshape(rep.shape))
            else:
                noises.append(None)
        probs = torch.softmax(self.model(self.transform(rep, noises)).float(), 1).view(draws, n, -1)
        votes = nn.functional.one_hot(probs.argmax(2), probs.shape[2]).sum(0).float()
        share = (votes + TIE_BREAK * probs.mean(0)) / (draws + TIE_BREAK)
        return share.clamp_min(1e-30).log()


def wrap(model: nn.Module, defenses: list[dict[str, Any]], options: dict[str, Any], bounds, layout: str, seed: int) -> Defended:
    """The defended model of a request's ``defenses`` and ``defense-params``."""
    return Defended(
        model,
        build_stages(defenses, bounds, layout),
        eot_draws=options.get("eot-draws", 8),
        prediction_draws=options.get("prediction-draws", 16),
        seed=seed,
    )


def describe(defenses: list[dict[str, Any]], options: dict[str, Any]) -> list[dict[str, Any]]:
    """The output's ``defenses``: each stage with its parameters and how the attack crossed it."""
    adaptive = bool(options.get("adaptive", True))
    return [
        {
            **d,
            "random": BY_NAME[d["name"]].random,
            "crossing": BY_NAME[d["name"]].crossing if adaptive else "none (transferred from the undefended model)",
        }
        for d in defenses
    ]


__all__ = ["Defended", "STAGES", "build_stages", "describe", "wrap"]
