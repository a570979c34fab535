"""The preprocessing defenses a request may put in front of the model: one declarative table.

A request names them in ``defenses``, an ordered list applied to the input (in input space, inside
``input-bounds``, before the model's own mean/std normalisation)::

    "defenses": [{"name": "spatial-smoothing", "window": 3}, {"name": "gaussian-noise", "sigma": 0.05}]

and tunes how they are attacked in ``defense-params`` (``adaptive``, ``eot-draws``, ``prediction-draws``).
:func:`validate_defenses` and :func:`validate_defense_params` turn hostile JSON into the normalised
values the engine (``app.engine.defenses``) runs, with every default filled in; :func:`describe`
lists them for ``GET /api/attacks``; :func:`json_schema` gives the OpenAPI document its shapes.
No torch here: the HTTP layer reads this module.

How an attack crosses each stage (``crossing``): ``bpda-identity`` (forward: the real transform; backward:
the identity, Athalye et al. 2018), ``exact`` (the stage is differentiable, almost everywhere for the median),
``eot`` (random: expectation over transformation). Random stages (``random``) are attacked with expectation over
transformation (EOT): each gradient averages the log-probabilities over ``eot-draws`` draws; a
prediction is the majority vote over ``prediction-draws`` draws fixed by the request's seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .attack_catalog import JSON_TYPES, Param
from .fields import fail as _fail
from .fields import parameter
from .fields import show as _show

FIELD = "defenses"
PARAMS_FIELD = "defense-params"
MAX_DEFENSES = 4
MAX_DRAWS = 64


@dataclass(frozen=True)
class Defense:
    """One requestable defense: its parameters and how an adaptive attack crosses it."""

    name: str
    title: str
    description: str
    paper: dict[str, str]
    params: tuple[Param, ...]
    differentiable: bool
    random: bool
    crossing: str
    crossing_description: str
    odd: tuple[str, ...] = ()  # integer parameters that must be odd (a median window)

    def defaults(self) -> dict[str, Any]:
        return {p.name: p.default for p in self.params}

    def describe(self) -> dict[str, Any]:
        params = []
        for p in self.params:
            row = p.describe()
            if p.name in self.odd:
                row["odd"] = True
            params.append(row)
        return {
            "name": self.name,
            "title": self.title,
            "description": self.description,
            "paper": self.paper,
            "parameters": params,
            "defaults": self.defaults(),
            "differentiable": self.differentiable,
            "random": self.random,
            "crossing": self.crossing,
            "crossing-description": self.crossing_description,
        }


_SQUEEZING = {
    "title": "Feature Squeezing: Detecting Adversarial Examples in Deep Neural Networks",
    "authors": "Xu, Evans, Qi",
    "venue": "NDSS 2018",
    "url": "https://arxiv.org/abs/1704.01155",
}
_BPDA = "Athalye, Carlini, Wagner: Obfuscated Gradients Give a False Sense of Security (ICML 2018)"

DEFENSES: tuple[Defense, ...] = (
    Defense(
        "spatial-smoothing",
        "Median smoothing (feature squeezing)",
        "Each pixel of each channel is replaced by the median of the window x window square around it "
        "(edges reflected); removes isolated (salt-and-pepper) perturbations.",
        _SQUEEZING,
        (Param("window", "integer", 3, "side of the square median window, in pixels (odd)", 3, 11),),
        differentiable=True,
        random=False,
        crossing="exact",
        crossing_description="the median is piecewise linear: the attack follows its own gradient (to the selected "
        "pixel of each window), which measured stronger than BPDA's identity or a mean filter's gradient.",
        odd=("window",),
    ),
    Defense(
        "jpeg-compression",
        "JPEG compression",
        "Each sample is encoded as a JPEG at the given quality and decoded again (Pillow), in the input range "
        "quantised to 8 bits; 3 channels as one colour image, any other count channel by channel.",
        {
            "title": "Countering Adversarial Images using Input Transformations; A study of the effect of JPG "
            "compression on adversarial images",
            "authors": "Guo, Rana, Cisse, van der Maaten; Dziugaite, Ghahramani, Roy",
            "venue": "ICLR 2018; arXiv 2016",
            "url": "https://arxiv.org/abs/1711.00117",
        },
        (Param("quality", "integer", 75, "JPEG quality (1: strongest compression, 100: weakest)", 1, 100),),
        differentiable=False,
        random=False,
        crossing="bpda-identity",
        crossing_description=f"forward: the real JPEG round trip; backward: the identity. {_BPDA}.",
    ),
    Defense(
        "gaussian-noise",
        "Gaussian noise",
        "Adds normal noise of standard deviation sigma x (upper - lower input bound) to every input value, "
        "then clips to the input bounds. Random: predictions are a majority vote over draws.",
        {
            "title": "Certified Adversarial Robustness via Randomized Smoothing",
            "authors": "Cohen, Rosenfeld, Kolter",
            "venue": "ICML 2019",
            "url": "https://arxiv.org/abs/1902.02918",
        },
        (Param("sigma", "number", 0.1, "noise standard deviation as a fraction of the input range", 0, 1),),
        differentiable=True,
        random=True,
        crossing="eot",
        crossing_description="differentiable (the clip passes the gradient inside the bounds); the attack's gradient "
        f"averages over eot-draws noise draws per step (expectation over transformation). {_BPDA}.",
    ),
    Defense(
        "bit-depth",
        "Bit-depth reduction (feature squeezing)",
        "Quantises every input value to 2^bits evenly spaced levels between the input bounds.",
        _SQUEEZING,
        (Param("bits", "integer", 4, "bits per value: 2^bits levels", 1, 8),),
        differentiable=False,
        random=False,
        crossing="bpda-identity",
        crossing_description=f"forward: the real rounding; backward: the identity. {_BPDA}.",
    ),
)

BY_NAME: dict[str, Defense] = {d.name: d for d in DEFENSES}

# ``defense-params``: how the defended model is attacked and read.
DEFENSE_PARAMS: tuple[Param, ...] = (
    Param(
        "adaptive",
        "boolean",
        True,
        "attack the defended model (BPDA through non-differentiable stages, EOT over "
        "random ones); false: attack the undefended model and transfer its perturbations (a naive evaluation that "
        "overstates the defense)",
    ),
    Param(
        "eot-draws",
        "integer",
        8,
        "draws of the random stages averaged in each attack gradient (expectation over "
        "transformation); used only with a random defense",
        1,
        MAX_DRAWS,
    ),
    Param(
        "prediction-draws",
        "integer",
        16,
        "draws of the random stages voting on each prediction (majority; fixed "
        "by the request's seed, so a sample's prediction is reproducible); used only with a random defense",
        1,
        MAX_DRAWS,
    ),
)


def validate_defenses(value: Any) -> list[dict[str, Any]]:
    """The request's ``defenses`` normalised: an ordered list (at most ``MAX_DEFENSES``) of
    ``{"name": ..., <every parameter>}`` with defaults filled in. ``None`` (field absent) is ``[]``.
    Raises ``ValidationError`` naming the field (``defenses[1].quality``), what was wrong and what is allowed."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise _fail(
            FIELD, f'expected a list of defenses such as [{{"name": "jpeg-compression", "quality": 75}}], got {_show(value)}'
        )
    if len(value) > MAX_DEFENSES:
        raise _fail(FIELD, f"at most {MAX_DEFENSES} defenses, got {len(value)}")
    out: list[dict[str, Any]] = []
    for i, entry in enumerate(value):
        where = f"{FIELD}[{i}]"
        if not isinstance(entry, dict):
            raise _fail(where, f"expected an object with a name, got {_show(entry)}")
        name = entry.get("name")
        if not isinstance(name, str) or name not in BY_NAME:
            raise _fail(f"{where}.name", f"must be one of {list(BY_NAME)}, got {_show(name)}")
        defense = BY_NAME[name]
        spec = {p.name: p for p in defense.params}
        unknown = sorted(k for k in entry if k != "name" and k not in spec)
        if unknown:
            raise _fail(where, f"{_show(unknown)} not accepted by '{name}'; accepted: {sorted(spec)}")
        normal: dict[str, Any] = {"name": name, **defense.defaults()}
        for key, raw in entry.items():
            if key != "name":
                normal[key] = parameter(f"{where}.{key}", spec[key], raw, odd=key in defense.odd)
        out.append(normal)
    return out


def validate_defense_params(value: Any) -> dict[str, Any]:
    """The request's ``defense-params`` normalised (``None``: every default)."""
    if value is None:
        value = {}
    if not isinstance(value, dict):
        raise _fail(PARAMS_FIELD, f"expected an object, got {_show(value)}")
    spec = {p.name: p for p in DEFENSE_PARAMS}
    unknown = sorted(set(value) - set(spec))
    if unknown:
        raise _fail(PARAMS_FIELD, f"{_show(unknown)} not accepted; accepted: {sorted(spec)}")
    out = {p.name: p.default for p in DEFENSE_PARAMS}
    for key, raw in value.items():
        out[key] = parameter(f"{PARAMS_FIELD}.{key}", spec[key], raw)
    return out


def is_random(defenses: list[dict[str, Any]]) -> bool:
    """True when any stage draws random numbers (then EOT and majority prediction apply)."""
    return any(BY_NAME[d["name"]].random for d in defenses)


def describe() -> dict[str, Any]:
    """The defenses and their options, as ``GET /api/attacks`` may list them (under ``defenses``)."""
    return {
        "max-defenses": MAX_DEFENSES,
        "defenses": [d.describe() for d in DEFENSES],
        "defense-params": [p.describe() for p in DEFENSE_PARAMS],
    }


def _schema(p: Param, odd: bool = False) -> dict[str, Any]:
    """A parameter's schema in the OpenAPI document's dialect (3.0: a boolean ``exclusiveMinimum``, no ``const``)."""
    out: dict[str, Any] = {"type": JSON_TYPES[p.kind], "default": p.default, "description": p.description}
    if p.kind == "integer":
        out.update(minimum=int(p.minimum), maximum=int(p.maximum))
        if odd:
            out["description"] += "; must be odd"
    elif p.kind == "number":
        out.update(minimum=p.minimum, exclusiveMinimum=True, maximum=p.maximum)
    return out


def json_schema() -> dict[str, dict[str, Any]]:
    """JSON Schemas of the two request fields (for the OpenAPI document)."""
    variants = [
        {
            "type": "object",
            "title": d.name,
            "required": ["name"],
            "additionalProperties": False,
            "properties": {
                "name": {"type": "string", "enum": [d.name]},
                **{p.name: _schema(p, p.name in d.odd) for p in d.params},
            },
        }
        for d in DEFENSES
    ]
    return {
        FIELD: {
            "type": "array",
            "maxItems": MAX_DEFENSES,
            "items": {"oneOf": variants},
            "description": "preprocessing defenses applied in this order in front of the model (absent: none)",
        },
        PARAMS_FIELD: {
            "type": "object",
            "additionalProperties": False,
            "properties": {p.name: _schema(p) for p in DEFENSE_PARAMS},
        },
    }
