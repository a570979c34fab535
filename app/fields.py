"""Checks of single JSON values in a request, with the messages users see.

Shared by the request's own fields (``app.schemas``) and the catalogs' parameter tables
(``app.attack_catalog``'s attack parameters, ``app.defense_catalog``'s defenses): one wording for one mistake.
Every failure is a ``ValidationError`` whose message starts with the field's path and whose
``details.field`` names it.
"""

from __future__ import annotations

import math
from typing import Any

from .attack_catalog import Param
from .exceptions import ValidationError


def fail(field: str, message: str) -> ValidationError:
    return ValidationError(f"{field}: {message}", details={"field": field})


def show(value: Any) -> str:
    """A value quoted in an error message, cut short: a message never echoes a whole body back."""
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def number(field: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise fail(field, f"expected a finite number, got {show(value)}")
    try:
        out = float(value)
    except OverflowError:  # an integer beyond a double's range
        raise fail(field, f"expected a finite number, got an integer of {len(str(abs(value)))} digits") from None
    if not math.isfinite(out):
        raise fail(field, f"expected a finite number, got {show(value)}")
    return out


def integer(field: str, value: Any, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise fail(field, f"expected an integer, got {show(value)}")
    if not lo <= value <= hi:
        raise fail(field, f"must be between {lo} and {hi}, got {show(value)}")
    return value


def choice(field: str, value: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise fail(field, f"must be one of {list(choices)}, got {show(value)}")
    return value


def parameter(field: str, spec: Param, value: Any, *, odd: bool = False) -> Any:
    """One parameter checked against its row of a catalog (type, range or choices); ``odd``: an integer
    that must be odd (a median window has a centre pixel)."""
    if spec.kind == "integer":
        out = integer(field, value, int(spec.minimum), int(spec.maximum))
        if odd and out % 2 == 0:
            raise fail(field, f"must be odd (a window has a centre pixel), got {out}")
        return out
    if spec.kind == "number":
        v = number(field, value)
        if not spec.minimum < v <= spec.maximum:
            raise fail(field, f"must be in ({spec.minimum:g}, {spec.maximum:g}], got {v}")
        return v
    if spec.kind == "boolean":
        if not isinstance(value, bool):
            raise fail(field, f"expected true or false, got {show(value)}")
        return value
    return choice(field, value, spec.choices)
