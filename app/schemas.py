"""The security-evaluation request: field names, defaults and validation.

This module owns the API's defaults. It turns a user's JSON body into a
normalized request where every parameter is explicit, so the stored job record
says exactly what ran. Field names follow PandaVision.
"""

from __future__ import annotations

from typing import Any

from . import attack_catalog as catalog
from . import defense_catalog, plugin_catalog
from .exceptions import ValidationError
from .fields import choice as _choice
from .fields import fail as _fail
from .fields import integer as _integer
from .fields import number as _number
from .fields import parameter
from .fields import show as _show

IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]

ATTACKS = catalog.REQUESTABLE
NORMS = catalog.NORMS
DEFAULT_PERTURBATION_VALUES = [0.0, 0.01, 0.02, 0.03, 0.05, 0.1]
FAST_MODE_SAMPLES = 100
MAX_BATCH_SIZE = 4096
MAX_STEPS = catalog.MAX_STEPS
# Caps on every list a request carries (the body itself is limited to MAX_JSON_KB, 256 KiB by default).
MAX_INDEXES = 10_000
MAX_SAMPLE_INDEX = 10**9
MAX_CHANNELS = 16
MAX_REFERENCE_CHARS = 1024
LAYOUTS = ("auto", "nchw", "nhwc")
# Sharding (``app.shards``): batches never straddle a block of SHARD_SIZE samples, so a shard of whole
# blocks computes what the unsharded run computes for its samples.
SHARD_SIZE = 1024
MIN_SHARD_SIZE = 16
MAX_SHARD_SIZE = 10**7
MAX_OUTPUT_INDEX = 1023  # below onnx_inspection.MAX_MODEL_OUTPUTS
# Per-sample inspection (``app.samples``): the first this many samples of the selection are re-attacked, traced and drawn.
DEFAULT_INSPECT_SAMPLES = 8
MAX_INSPECT_SAMPLES = 32

# Per attack: accepted attack-params and their defaults (step-size is a fraction of epsilon), derived
# from the one table in ``app.attack_catalog`` that also validates them and feeds ``GET /api/attacks``.
ATTACK_PARAMETERS: dict[str, dict[str, Any]] = {a.name: a.defaults() for a in catalog.ATTACKS}
APGD_LOSSES = catalog.APGD_LOSSES


def _described(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {**schema, "description": description} if description else schema


def _integer_field(lo: int, hi: int, default: int, description: str = "") -> dict[str, Any]:
    return _described({"type": "integer", "minimum": lo, "maximum": hi, "default": default}, description)


def _enum_field(choices: tuple[str, ...], default: str, description: str = "") -> dict[str, Any]:
    return _described({"type": "string", "enum": list(choices), "default": default}, description)


REFERENCE = _described(
    {"type": "string", "minLength": 1, "maxLength": MAX_REFERENCE_CHARS}, "an uploaded id, or a file name in the files/ folder"
)
SAMPLE_INDEX = {"type": "integer", "minimum": 0, "maximum": MAX_SAMPLE_INDEX}
CHANNEL_VALUES = {"type": "array", "items": {"type": "number"}, "minItems": 1, "maxItems": MAX_CHANNELS}
# The request's fields, each as its JSON Schema: the one table the validator below reads its ranges,
# choices and defaults from, and that the OpenAPI document publishes (``request_schema``), so the two
# cannot disagree. The messages stay the validator's own; ``request_schema`` writes in the two limits that are
# settings (MAX_PERTURBATION_VALUES, MAX_SHARDS).
FIELDS: dict[str, dict[str, Any]] = {
    "trained-model": REFERENCE,
    "dataset": REFERENCE,
    "perturbation-values": {
        "type": "array",
        "items": {"type": "number", "minimum": 0, "maximum": 1},
        "minItems": 1,
        "maxItems": 50,
        "default": DEFAULT_PERTURBATION_VALUES,
        "description": "epsilons as fractions of the input range; 0 is always added",
    },
    "perturbation-type": _enum_field(("max-norm", "random"), "max-norm", "random: noise of the same norm, no attack"),
    "attack": _enum_field(ATTACKS, "pgd", "GET /api/attacks describes each one"),
    "norm": _enum_field(NORMS, "linf"),
    "attack-params": {
        "type": "object",
        "maxProperties": max(plugin_catalog.MAX_PARAMS, *(len(p) for p in ATTACK_PARAMETERS.values())),
        "description": "the attack's parameters (GET /api/attacks: names, types, ranges, defaults)",
    },
    "evaluation-mode": _enum_field(("complete", "fast"), "complete", f"fast: the first {FAST_MODE_SAMPLES} samples"),
    "indexes": _described({"type": "array", "items": SAMPLE_INDEX, "minItems": 1, "maxItems": MAX_INDEXES}, "default: all"),
    "preprocessing": {
        "type": "object",
        "properties": {"mean": CHANNEL_VALUES, "std": CHANNEL_VALUES},
        "additionalProperties": False,
        "description": "mean/std applied inside the model; {} for none; absent: ImageNet's",
    },
    "input-bounds": {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 2, "default": [0.0, 1.0]},
    "performance-metric": _enum_field(("classification-accuracy",), "classification-accuracy"),
    "task": _enum_field(("classification",), "classification"),
    "batch-size": _integer_field(1, MAX_BATCH_SIZE, 128),
    "seed": _integer_field(0, 2**31 - 1, 0),
    "input-layout": _enum_field(LAYOUTS, "auto", "auto: the model's declared input decides"),
    "output-index": _integer_field(0, MAX_OUTPUT_INDEX, 0, "the model output holding the class scores"),
    "shards": {
        "oneOf": [{"type": "string", "enum": ["auto"]}, {"type": "integer", "minimum": 1, "maximum": 4}],
        "default": "auto",
        "description": "jobs the evaluation is split into; evaluation-mode fast takes 1 or auto",
    },
    "shard-size": _integer_field(MIN_SHARD_SIZE, MAX_SHARD_SIZE, SHARD_SIZE, "samples per block a shard holds whole"),
    "inspect-samples": _integer_field(1, MAX_INSPECT_SAMPLES, DEFAULT_INSPECT_SAMPLES, "samples re-attacked, traced and drawn"),
    **defense_catalog.json_schema(),  # "defenses" and "defense-params"
}
REQUEST_FIELDS = tuple(FIELDS)


def request_schema(
    names: tuple[str, ...],
    *,
    max_values: int,
    max_shards: int,
    extra: dict[str, Any] | None = None,
    plugins: tuple[str, ...] = (),
) -> dict[str, Any]:
    """The JSON Schema of a request body made of the ``names`` fields (and ``extra`` ones), with the
    service's own limits and the plugin attacks live workers offer now: what the OpenAPI document
    publishes for ``evaluation_request``'s input."""
    properties = {name: FIELDS[name] for name in names if name in FIELDS}
    if "attack" in properties and plugins:
        properties["attack"] = {**properties["attack"], "enum": [*properties["attack"]["enum"], *sorted(plugins)]}
    if "perturbation-values" in properties:
        properties["perturbation-values"] = {**properties["perturbation-values"], "maxItems": max_values}
    if "shards" in properties:
        integer = {"type": "integer", "minimum": 1, "maximum": max(1, max_shards)}
        properties["shards"] = {**properties["shards"], "oneOf": [properties["shards"]["oneOf"][0], integer]}
    properties.update(extra or {})
    required = [n for n in ("trained-model", "dataset", *(extra or {})) if n in properties]
    return {"type": "object", "required": required, "additionalProperties": False, "properties": properties}


def _list(field: str, raw: Any, limit: int, what: str) -> list[Any]:
    if not isinstance(raw, list) or not raw:
        raise _fail(field, f"expected a non-empty list of {what}")
    if len(raw) > limit:
        raise _fail(field, f"at most {limit} values, got {len(raw)}")
    return raw


def sample_index(field: str, value: Any) -> int:
    """A position in a dataset (``indexes``, an adversarial example's ``index``)."""
    return _integer(field, value, SAMPLE_INDEX["minimum"], SAMPLE_INDEX["maximum"])


def _field(body: dict[str, Any], name: str) -> Any:
    """An integer or a choice field checked against its row of ``FIELDS`` (its default when absent)."""
    spec = FIELDS[name]
    value = body.get(name, spec["default"])
    if spec["type"] == "integer":
        return _integer(name, value, spec["minimum"], spec["maximum"])
    return _choice(name, value, tuple(spec["enum"]))


def _string(field: str, value: Any) -> str:
    if value is None or (isinstance(value, str) and not value.strip()):
        raise _fail(field, "required: an uploaded id or a file name inside the data directory")
    if not isinstance(value, str):
        raise _fail(field, f"must be a string (an uploaded id or a file name inside the data directory), got {_show(value)}")
    if len(value) > MAX_REFERENCE_CHARS:
        raise _fail(field, f"too long (at most {MAX_REFERENCE_CHARS} characters)")
    if not value.isprintable() or any(0xD800 <= ord(c) <= 0xDFFF for c in value):
        raise _fail(field, "must not contain control characters or unpaired surrogates")
    return value.strip()


def perturbation_values(raw: Any, limit: int) -> list[float]:
    field = "perturbation-values"
    values = {_number(field, v) for v in _list(field, raw, limit, "numbers in [0, 1]")}
    bad = [v for v in values if not 0.0 <= v <= 1.0]
    if bad:
        raise _fail(field, f"values must lie in [0, 1] (fractions of the input range), got {sorted(bad)}")
    values.add(0.0)
    if len(values) > limit:
        raise _fail(field, f"at most {limit} distinct values, got {len(values)}")
    return sorted(values)


def attack_parameters(attack: str, raw: Any, plugins: dict[str, catalog.Attack] | None = None) -> dict[str, Any]:
    """``attack-params`` checked against the attack's table: a built-in's, or the one a live worker
    published for a plugin (``plugins``, from ``app.plugin_catalog.entries``)."""
    field = "attack-params"
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise _fail(field, "expected an object")
    spec = {p.name: p for p in plugins[attack].params} if plugins and attack in plugins else catalog.params_of(attack)
    unknown = sorted(set(raw) - set(spec))
    if unknown:
        raise _fail(field, f"{_show(unknown)} not accepted by '{attack}'; accepted: {sorted(spec)}")
    params = {name: p.default for name, p in spec.items()}
    for key, value in raw.items():
        params[key] = parameter(f"{field}.{key}", spec[key], value)
    return params


def attack_name(body: dict[str, Any], plugins: dict[str, catalog.Attack]) -> str:
    """The ``attack``: a built-in, or a plugin while a live worker offers it."""
    try:
        return _choice("attack", body.get("attack", FIELDS["attack"]["default"]), (*ATTACKS, *plugins))
    except ValidationError as exc:
        exc.message += " (a plugin attack is accepted only while a live worker offers it)"
        raise


def preprocessing(raw: Any, missing: bool) -> dict[str, list[float]]:
    """Mean/std normalization applied inside the model; absent means ImageNet's."""
    field = "preprocessing"
    if missing:
        return {"mean": list(IMAGENET_MEAN), "std": list(IMAGENET_STD)}
    if raw is None or raw == {}:
        return {}
    if not isinstance(raw, dict) or set(raw) != {"mean", "std"}:
        raise _fail(field, 'expected {"mean": [...], "std": [...]} or {} for none')
    mean = _list(f"{field}.mean", raw["mean"], MAX_CHANNELS, "numbers, one per channel")
    std = _list(f"{field}.std", raw["std"], MAX_CHANNELS, "numbers, one per channel")
    if len(mean) != len(std):
        raise _fail(field, "mean and std must be non-empty lists of the same length")
    mean = [_number(f"{field}.mean", v) for v in mean]
    std = [_number(f"{field}.std", v) for v in std]
    if any(s <= 0 for s in std):
        raise _fail(f"{field}.std", "every std must be positive")
    return {"mean": mean, "std": std}


def sharding(body: dict[str, Any], mode: str, max_shards: int) -> tuple[int | str, int]:
    """``shards`` ("auto" or 1..max_shards; ``fast`` runs unsharded) and ``shard-size`` (samples per block)."""
    shards = body.get("shards", "auto")
    if shards != "auto":
        if isinstance(shards, str):
            raise _fail("shards", f"expected 'auto' or an integer, got {_show(shards)}")
        shards = _integer("shards", shards, 1, max(1, max_shards))
        if shards > 1 and mode == "fast":
            raise _fail("shards", f"evaluation-mode 'fast' runs at most {FAST_MODE_SAMPLES} samples in one job; use 1 or 'auto'")
    return shards, _field(body, "shard-size")


def evaluation_request(
    body: Any, *, max_values: int = 50, max_shards: int = 4, plugins: dict[str, catalog.Attack] | None = None
) -> dict[str, Any]:
    """Validate a request body and return it normalized, with every default filled in. ``plugins``:
    the plugin attacks live workers offer now (a request may name one like a built-in)."""
    if not isinstance(body, dict):
        raise ValidationError("request body must be a JSON object")
    unknown = sorted(set(body) - set(REQUEST_FIELDS))
    if unknown:
        raise ValidationError(
            f"unknown fields {_show(unknown)}", details={"field": unknown[0][:80], "accepted": list(REQUEST_FIELDS)}
        )
    req: dict[str, Any] = {
        "trained-model": _string("trained-model", body.get("trained-model")),
        "dataset": _string("dataset", body.get("dataset")),
    }
    req["perturbation-values"] = perturbation_values(body.get("perturbation-values", DEFAULT_PERTURBATION_VALUES), max_values)
    req["perturbation-type"] = _field(body, "perturbation-type")
    attack = attack_name(body, plugins or {})
    if req["perturbation-type"] == "random":
        if "attack" in body:
            raise _fail("attack", "perturbation-type 'random' adds noise and takes no attack")
        attack = "noise"
    req["attack"] = attack
    req["norm"] = _field(body, "norm")
    req["attack-params"] = attack_parameters(attack, body.get("attack-params"), plugins)
    if attack in (plugins or {}) and req["norm"] not in plugins[attack].norms:
        raise _fail("norm", f"the plugin attack '{attack}' supports {list(plugins[attack].norms)}, got {_show(req['norm'])}")
    req["evaluation-mode"] = _field(body, "evaluation-mode")
    indexes = body.get("indexes")
    if indexes is not None:
        idx = sorted({sample_index("indexes", i) for i in _list("indexes", indexes, MAX_INDEXES, "sample indexes")})
        req["indexes"] = idx
    else:
        req["indexes"] = None
    req["preprocessing"] = preprocessing(body.get("preprocessing"), "preprocessing" not in body)
    bounds = body.get("input-bounds", FIELDS["input-bounds"]["default"])
    if not isinstance(bounds, list) or len(bounds) != 2:
        raise _fail("input-bounds", "expected [lower, upper]")
    lb, ub = (_number("input-bounds", b) for b in bounds)
    if not lb < ub:
        raise _fail("input-bounds", f"lower bound must be below upper bound, got [{lb}, {ub}]")
    req["input-bounds"] = [lb, ub]
    for name in ("performance-metric", "task", "batch-size", "seed", "input-layout", "output-index"):
        req[name] = _field(body, name)
    req["shards"], req["shard-size"] = sharding(body, req["evaluation-mode"], max_shards)
    req["inspect-samples"] = _field(body, "inspect-samples")
    defenses = defense_catalog.validate_defenses(body.get("defenses"))
    if defenses:  # only then: an undefended request, and its checkpoints' fingerprint, stay as they were
        req["defenses"] = defenses
        req["defense-params"] = defense_catalog.validate_defense_params(body.get("defense-params"))
    elif "defense-params" in body:
        raise _fail("defense-params", "only with a non-empty defenses list")
    return req


# -- Binding a request to its model and dataset --------------------------------
def detect_layout(input_shape: list[Any]) -> str:
    """``nhwc`` when a model's declared input is channels-last: four dims, the last one 1 or 3
    and the second one not (e.g. ``[N, 32, 32, 3]``); ``nchw`` otherwise (also when unknown)."""
    if len(input_shape) == 4 and input_shape[3] in (1, 3) and input_shape[1] not in (1, 3):
        return "nhwc"
    return "nchw"


def resolve_layout(requested: str, input_shape: list[Any]) -> str:
    """The layout that runs: the request's, or with ``auto`` the one the model's input declares."""
    return detect_layout(input_shape) if requested == "auto" else requested


def channels(sample_shape: list[int] | tuple[int, ...], layout: str) -> int:
    """Channels of one sample (C x H x W, or H x W x C for ``nhwc``)."""
    return int(sample_shape[-1] if layout == "nhwc" else sample_shape[0])


def scores_shape(shape: list[Any]) -> list[Any]:
    """A declared output shape as the engine sees it: ``[N, K, 1, 1]`` (or ``[N, 1, K]``) is ``[N, K]``."""
    if len(shape) <= 2:
        return shape
    big = [d for d in shape[1:] if d != 1]
    return [shape[0], big[0] if big else 1] if len(big) <= 1 else shape


def bind_to_files(req: dict[str, Any], model: dict[str, Any], dataset: dict[str, Any]) -> dict[str, Any]:
    """The request to store and run: ``auto`` resolved to the model's layout, then every check
    that needs the model's and the dataset's descriptions (400 naming the field)."""
    req = {**req, "input-layout": resolve_layout(req.get("input-layout", "auto"), model.get("input-shape") or [])}
    check_against_dataset(req, dataset)
    check_against_model(req, model, dataset)
    return req


def check_against_dataset(req: dict[str, Any], dataset: dict[str, Any]) -> None:
    """Checks that need the dataset's description (known at submit time); channels are counted
    on the axis of the request's (resolved) ``input-layout``."""
    layout = req.get("input-layout", "nchw")
    n_channels, n = channels(dataset["shape"], layout), dataset["n-samples"]
    pre = req["preprocessing"]
    if pre and len(pre["mean"]) not in (1, n_channels):
        axis = "last" if layout == "nhwc" else "first"
        raise _fail(
            "preprocessing",
            f"{len(pre['mean'])} mean/std values but the dataset has {n_channels} channels (samples {dataset['shape']}, "
            f"{layout}: channels on the {axis} axis; set input-layout if that is not the model's layout)",
        )
    if req["indexes"] and req["indexes"][-1] >= n:
        raise _fail("indexes", f"index {req['indexes'][-1]} is out of range for a dataset of {n} samples")
    value_range = dataset.get("value-range")
    lb, ub = req["input-bounds"]
    if value_range and (value_range[0] < lb - 1e-6 or value_range[1] > ub + 1e-6):
        raise _fail(
            "input-bounds",
            f"the dataset's values span [{value_range[0]:.4g}, {value_range[1]:.4g}], outside input-bounds [{lb}, {ub}]",
        )


def check_against_model(req: dict[str, Any], model: dict[str, Any], dataset: dict[str, Any]) -> None:
    """Shape agreement between a model's declared input/outputs and a dataset (which holds samples
    in the model's layout, so shapes compare axis by axis), and an ``output-index`` the model has."""
    in_shape = model.get("input-shape") or []
    want = dataset["shape"]
    static = [d if isinstance(d, int) and d > 0 else None for d in in_shape[1:]]
    if len(in_shape) == 4 and any(s is not None and s != w for s, w in zip(static, want)):
        raise ValidationError(
            f"dataset: samples are {want} but the model expects {in_shape[1:]}",
            details={"field": "dataset"},
        )
    index, shapes = req.get("output-index", 0), model.get("output-shapes")
    if shapes is not None and index >= len(shapes):
        raise _fail("output-index", f"the model has {len(shapes)} output(s), so output-index must be below {len(shapes)}")
    out = scores_shape((shapes[index] if shapes is not None else model.get("output-shape")) or [])
    if len(out) > 2 and all(isinstance(d, int) and d > 0 for d in out[1:]):
        raise _fail("output-index", f"output {index} has shape {out}, not one score per class (N x K or N x K x 1 x 1)")
    n_classes = dataset.get("n-classes")
    if len(out) == 2 and isinstance(out[1], int) and out[1] > 0 and n_classes and n_classes > out[1]:
        raise ValidationError(
            f"dataset: it has {n_classes} classes but the model outputs {out[1]} scores",
            details={"field": "dataset"},
        )
