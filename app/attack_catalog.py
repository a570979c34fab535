"""The attacks a request may name, and their parameters: one declarative table.

The table is the single source of truth for ``attack-params``: ``app.schemas`` validates
requests against it (defaults, types, ranges, choices) and ``GET /api/attacks`` describes
it. A parameter added here is accepted, documented and defaulted at once. No torch here:
the HTTP layer reads this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

MAX_STEPS = 10_000
APGD_LOSSES = ("ce", "dlr", "dlr-targeted", "ce+dlr-targeted")
NORMS = ("linf", "l2")
PERTURBATION_TYPES = ("max-norm", "random")


@dataclass(frozen=True)
class Param:
    """One attack parameter. ``kind``: integer (``minimum``..``maximum`` inclusive), number
    (``minimum`` exclusive, ``maximum`` inclusive), boolean, or choice (one of ``choices``)."""

    name: str
    kind: str
    default: Any
    description: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()

    def describe(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "type": JSON_TYPES[self.kind], "default": self.default}
        if self.kind in ("integer", "number"):
            out["minimum"], out["maximum"] = self.minimum, self.maximum
            out["exclusive-minimum"] = self.kind == "number"
        if self.kind == "choice":
            out["choices"] = list(self.choices)
        out["description"] = self.description
        return out


@dataclass(frozen=True)
class Attack:
    """One requestable attack (or the random-noise baseline) and its parameters."""

    name: str
    title: str
    perturbation_type: str
    description: str
    paper: dict[str, str] | None
    params: tuple[Param, ...]
    norms: tuple[str, ...] = NORMS

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}

    def describe(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "title": self.title,
            "perturbation-type": self.perturbation_type,
            "norms": list(self.norms),
            "description": self.description,
            "paper": self.paper,
            "parameters": [p.describe() for p in self.params],
            "defaults": self.defaults(),
        }


JSON_TYPES = {"integer": "integer", "number": "number", "boolean": "boolean", "choice": "string"}


def _steps(name: str, default: int, what: str) -> Param:
    return Param(name, "integer", default, what, 1, MAX_STEPS)


def _restarts(what: str = "independent runs per sample from fresh random starts; the strongest counts") -> Param:
    return Param("restarts", "integer", 1, what, 1, 100)


def _targets(default: int, what: str) -> Param:
    return Param("n-target-classes", "integer", default, what, 1, 100)


# PGD first: the default attack, and the order of the request's "attack" choices in error messages.
ATTACKS: tuple[Attack, ...] = (
    Attack(
        "pgd",
        "Projected Gradient Descent",
        "max-norm",
        "Repeated gradient steps, each projected back into the epsilon ball and the input range, with a random start "
        "and optional restarts.",
        {"title": "Towards Deep Learning Models Resistant to Adversarial Attacks",
         "authors": "Madry, Makelov, Schmidt, Tsipras, Vladu", "venue": "ICLR 2018", "url": "https://arxiv.org/abs/1706.06083"},
        (
            _steps("steps", 50, "gradient steps per run"),
            Param("step-size", "number", 0.1, "step length as a fraction of epsilon", 0, 10),
            Param("random-start", "boolean", True, "start each run from a random point in the epsilon ball"),
            _restarts(),
        ),
    ),
    Attack(
        "fgsm",
        "Fast Gradient Sign Method",
        "max-norm",
        "One gradient step of size epsilon from the clean input (L-inf: the gradient's sign; L2: the normalized "
        "gradient). Fast and weak: a lower bound on what an attacker achieves.",
        {"title": "Explaining and Harnessing Adversarial Examples", "authors": "Goodfellow, Shlens, Szegedy",
         "venue": "ICLR 2015", "url": "https://arxiv.org/abs/1412.6572"},
        (),
    ),
    Attack(
        "apgd",
        "Auto-PGD",
        "max-norm",
        "PGD with momentum and a step size that halves where the loss stops improving (no step size to tune); "
        "cross-entropy, DLR or targeted DLR loss. The default runs AutoAttack's first two attacks.",
        {"title": "Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free attacks",
         "authors": "Croce, Hein", "venue": "ICML 2020", "url": "https://arxiv.org/abs/2003.01690"},
        (
            _steps("steps", 100, "iterations per run"),
            _restarts(),
            Param("loss", "choice", "ce+dlr-targeted", "the loss ascended; ce+dlr-targeted runs ce, then targeted DLR on "
                  "what is left", choices=APGD_LOSSES),
            _targets(9, "wrong classes the targeted DLR loss aims at, highest-scored first"),
        ),
    ),
    Attack(
        "fmn",
        "Fast Minimum-Norm attack",
        "max-norm",
        "Finds each sample's smallest successful perturbation in one run, so the whole curve costs one attack; "
        "the norm constraint shrinks while the point is adversarial and grows while it is not.",
        {"title": "Fast Minimum-norm Adversarial Attacks through Adaptive Norm Constraints",
         "authors": "Pintor, Roli, Brendel, Biggio", "venue": "NeurIPS 2021", "url": "https://arxiv.org/abs/2102.12827"},
        (
            _steps("steps", 200, "iterations (step size and gamma anneal by cosine over them)"),
            Param("step-size", "number", 1.0, "initial step size", 0, 10),
            Param("gamma", "number", 0.05, "initial rate at which the norm constraint changes", 0, 10),
        ),
    ),
    Attack(
        "auto",
        "FMN then APGD (the strongest setting)",
        "max-norm",
        "One FMN run, then at each epsilon APGD with cross-entropy and with targeted DLR on the samples still "
        "standing, starting from the FMN perturbation; samples near the boundary get more targets.",
        {"title": "Reliable evaluation of adversarial robustness with an ensemble of diverse parameter-free attacks; "
         "Fast Minimum-norm Adversarial Attacks through Adaptive Norm Constraints",
         "authors": "Croce, Hein; Pintor, Roli, Brendel, Biggio", "venue": "ICML 2020; NeurIPS 2021",
         "url": "https://arxiv.org/abs/2003.01690"},
        (
            _steps("fmn-steps", 200, "FMN iterations"),
            _steps("apgd-steps", 100, "APGD iterations per loss and target"),
            _targets(3, "wrong classes targeted by APGD's DLR loss (up to 9 for samples near the boundary)"),
        ),
    ),
    Attack(
        "fgm-minimal",
        "Minimal FGM (Dioptra)",
        "max-norm",
        "Per sample, the smallest epsilon on a grid at which one gradient step from the clean input (FGSM's sign for "
        "L-inf, the normalised gradient for L2) succeeds; the grid is grid-steps evenly spaced epsilons up to the "
        "largest requested, plus the requested ones. The per-sample minimal epsilons feed the breaking-perturbation "
        "figure (minimal-norm); the curve counts a sample broken from its minimal epsilon on.",
        {"title": "Explaining and Harnessing Adversarial Examples (minimal variant as in NIST Dioptra / ART)",
         "authors": "Goodfellow, Shlens, Szegedy", "venue": "ICLR 2015", "url": "https://arxiv.org/abs/1412.6572"},
        (Param("grid-steps", "integer", 20, "evenly spaced epsilons tried up to the largest requested one", 1, 1000),),
    ),
    Attack(
        "noise",
        "Random noise (baseline)",
        "random",
        "Not an attack: noise of size epsilon in a random direction (L-inf: random signs). Requested with "
        '"perturbation-type": "random" and no attack; it shows how much accuracy falls under perturbations nobody chose.',
        None,
        (_restarts("independent noise draws per sample; a sample counts as broken if any draw breaks it"),),
    ),
)

BY_NAME: dict[str, Attack] = {a.name: a for a in ATTACKS}
REQUESTABLE = tuple(a.name for a in ATTACKS if a.perturbation_type == "max-norm")  # the request's ``attack`` field


def params_of(attack: str) -> dict[str, Param]:
    """The parameters an attack accepts, by name."""
    return {p.name: p for p in BY_NAME[attack].params}


def describe(perturbation_type: str | None = None) -> list[dict[str, Any]]:
    """Every attack (or those of one perturbation type) as ``GET /api/attacks`` answers it."""
    return [a.describe() for a in ATTACKS if perturbation_type in (None, a.perturbation_type)]
