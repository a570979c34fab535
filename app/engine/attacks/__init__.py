"""Attacks, one small file each; ``build`` makes one from the API's names.

Parameter names here are the API's (``step-size``); the classes take Python
keywords (``step_size``).
"""

from __future__ import annotations

from typing import Any

from ..bounds import OutOfMemory, is_out_of_memory
from .apgd import APGD
from .auto import Auto
from .base import Attack, Context, StopRequested
from .fgm_minimal import FGMMinimal
from .fgsm import FGSM
from .fmn import FMN
from .noise import Noise
from .pgd import PGD
from .state import ArraySource, Hooks, SweepState

ATTACKS: dict[str, type[Attack]] = {
    "fgsm": FGSM, "pgd": PGD, "apgd": APGD, "fmn": FMN, "auto": Auto, "noise": Noise, "fgm-minimal": FGMMinimal,
}  # fmt: skip

__all__ = [
    "APGD",
    "ATTACKS",
    "ArraySource",
    "Attack",
    "Auto",
    "Context",
    "FGMMinimal",
    "FGSM",
    "FMN",
    "Hooks",
    "Noise",
    "OutOfMemory",
    "PGD",
    "StopRequested",
    "SweepState",
    "build",
    "is_out_of_memory",
]


def build(name: str, *, norm: str, params: dict[str, Any], seed: int = 0, batch_size: int = 128, autocast: bool = True) -> Attack:
    kwargs = {k.replace("-", "_"): v for k, v in params.items()}
    return ATTACKS[name](norm=norm, seed=seed, batch_size=batch_size, autocast=autocast, **kwargs)
