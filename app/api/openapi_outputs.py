"""The JSON Schemas of what a finished evaluation answers: its output (curve, figures, checks, inspection,
timing), the summary a list shows, the inspected samples with their image URLs, and an adversarial
example. Written from the code that builds them: ``app.engine.evaluation`` and ``app.merge`` (the output),
``app.figures``, ``app.reliability`` (checks), ``app.samples`` and ``app.api.samples`` / ``app.api.examples``."""

from __future__ import annotations

from typing import Any

from .. import reliability, samples
from ..records import STATUSES
from .openapi_schemas import (
    ANY,
    BOOLEAN,
    COUNT,
    INTEGER,
    JOB_ID,
    NUMBER,
    SHA256,
    STRING,
    TIME,
    URL,
    array,
    links,
    nullable,
    obj,
    ref,
)

FRACTION = {"type": "number", "minimum": 0, "maximum": 1}
INTERVAL = nullable(array(nullable(FRACTION), minItems=2, maxItems=2, description="95% Wilson interval; null when n is 0"))
CURVE = obj(
    ("x-values", "y-values"),
    {"x-values": array(FRACTION, description="epsilons, fractions of the input range"), "y-values": array(FRACTION)},
    "accuracy against epsilon",
)
FILE_REF = obj(
    ("id",), {"id": STRING, "sha256": nullable(SHA256)}, "the model or dataset that ran (an upload's id or a file name)"
)
CONFIDENCES = {"prediction": INTEGER, "confidence": NUMBER, "true-confidence": NUMBER}

SCHEMAS: dict[str, Any] = {
    "Summary": obj(
        ("sec-curve",),
        {
            "sec-curve": CURVE,
            "clean-accuracy": FRACTION,
            "sec-value": NUMBER,
            "sec-level": STRING,
            "n-samples": COUNT,
            "reliable": BOOLEAN,
        },
        "include=summary: a finished evaluation's headline figures",
    ),
    "PerEpsilon": obj(
        ("epsilon", "epsilon-absolute", "n", "accuracy"),
        {
            "epsilon": FRACTION,
            "epsilon-absolute": {**NUMBER, "description": "epsilon in input units"},
            "n": COUNT,
            "accuracy": FRACTION,
            "accuracy-ci95": INTERVAL,
            "attack-success-rate": nullable({**FRACTION, "description": "of the samples right when clean; null when none"}),
            "attack-success-rate-ci95": INTERVAL,
            "mean-true-confidence": nullable(NUMBER),
            "per-class-accuracy": array(nullable(FRACTION), description="in the order of figures.classes"),
        },
    ),
    "Figures": obj(
        ("per-epsilon",),
        {
            "classes": array(INTEGER),
            "class-counts": array(COUNT),
            "mean-true-confidence-clean": nullable(NUMBER),
            "per-epsilon": array(ref("PerEpsilon")),
            "breaking-perturbation": nullable(
                obj(
                    ("source", "norm", "unit", "count"),
                    {
                        "source": {"type": "string", "enum": ["minimal-norm", "epsilon-grid"]},
                        "norm": STRING,
                        "unit": STRING,
                        "count": COUNT,
                        **{k: nullable(NUMBER) for k in ("median", "q1", "q3")},
                    },
                    "each broken sample's smallest breaking perturbation: median and quartiles",
                )
            ),
        },
    ),
    "Check": obj(
        ("name", "status", "message"),
        {
            "name": {"type": "string", "enum": list(reliability.NAMES)},
            "status": {"type": "string", "enum": ["pass", "warn"]},
            "message": STRING,
            "value": nullable({**NUMBER, "description": "the bad share (curve-never-rises: the largest rise); null if n/a"}),
            "count": nullable(COUNT),
            "samples": nullable(COUNT),
            "threshold": nullable(NUMBER),
            "standing": {**COUNT, "description": "gradient-free-attack: samples the attack left standing at the largest epsilon"},
            "evaluated": {**COUNT, "description": "gradient-free-attack: samples evaluated"},
            "own-draws-only": {
                **COUNT,
                "description": "gradient-free-attack on a random defense: breaks that fooled only the evaluation's own draws",
            },
            "scatter": {**COUNT, "description": "no-weaker-than-fgsm, random defense: the excess allowed as the draws' scatter"},
        },
        "a reliability check: it warns when value exceeds threshold",
    ),
    "Output": obj(
        ("sec-curve", "clean-accuracy", "sec-value", "sec-level", "n-samples", "attack", "job_id"),
        {
            "sec-curve": CURVE,
            "clean-accuracy": FRACTION,
            "sec-value": {**NUMBER, "description": "area under the curve, normalized"},
            "sec-level": STRING,
            "n-samples": COUNT,
            "perturbation-type": {"type": "string", "enum": ["max-norm", "random"]},
            "performance-metric": STRING,
            "attack": obj(
                ("name", "norm", "params", "epsilons-absolute"),
                {
                    "name": STRING,
                    "norm": STRING,
                    "params": {"type": "object", "description": "attack-params as run, defaults filled in"},
                    "repr": STRING,
                    "epsilons-absolute": array(NUMBER),
                    "input-bounds": array(NUMBER, minItems=2, maxItems=2),
                    "input-dtype": STRING,
                    "preprocessing": {"type": "object"},
                    "seed": INTEGER,
                    "batch-size": INTEGER,
                    "batch-size-requested": INTEGER,
                },
            ),
            "figures": ref("Figures"),
            "checks": array(ref("Check")),
            "reliable": {**BOOLEAN, "description": "false exactly when a check warns"},
            "model-notes": {"type": "object", "description": "how the model was converted and verified"},
            "device": STRING,
            "resumed": {**BOOLEAN, "description": "the job resumed from a checkpoint"},
            "inspection": obj(
                ("count", "limit", "samples"),
                {
                    "count": COUNT,
                    "limit": {**COUNT, "maximum": samples.MAX_SAMPLES},
                    "samples": array(obj(("sample", "index"), {k: COUNT for k in ("sample", "position", "index", "label")})),
                    "error": {**STRING, "description": "why the inspection failed (the curve is unaffected)"},
                },
            ),
            "timing": {"type": "object", "description": "seconds per stage (sharded: summed, and per shard as lists)"},
            "defenses": array(
                obj(("name", "random", "crossing"), {"name": STRING, "random": BOOLEAN, "crossing": STRING}),
                description="the request's defenses as run (parameters filled in), and how the attack crossed each",
            ),
            "defense-params": obj(
                ("adaptive", "random"),
                {"adaptive": BOOLEAN, "random": BOOLEAN, "eot-draws": INTEGER, "prediction-draws": INTEGER},
                "adaptive: attacked through the defenses (false: transferred from the undefended model)",
            ),
            "undefended": obj(
                ("sec-curve", "clean-accuracy", "sec-value", "sec-level"),
                {"sec-curve": CURVE, "clean-accuracy": FRACTION, "sec-value": NUMBER, "sec-level": STRING},
                "the same attack on the same samples without the defenses (only with defenses)",
            ),
            "artifacts": {"type": "object"},
            "model": FILE_REF,
            "dataset": FILE_REF,
            "job_id": JOB_ID,
            "attempt": INTEGER,
            "shards": obj(
                ("count",), {"count": INTEGER, "shard-size": INTEGER, "ranges": array(array(INTEGER)), "attempts": array(INTEGER)}
            ),
        },
        "a finished evaluation's output",
    ),
    "SampleEpsilon": obj(
        ("epsilon", "adversarial", "prediction", "images"),
        {
            "epsilon": FRACTION,
            "epsilon-absolute": NUMBER,
            "adversarial": BOOLEAN,
            **CONFIDENCES,
            "norm": {**NUMBER, "description": "the perturbation's norm in input units"},
            "trace": nullable(
                obj(
                    ("loss",),
                    {
                        "loss": array(NUMBER),
                        "distance": array(NUMBER),
                        "adversarial-on-path": BOOLEAN,
                        "returned-adversarial": BOOLEAN,
                    },
                    "the attack's path (null at epsilon 0 and for a sample wrong when clean)",
                )
            ),
            "images": obj(
                ("adversarial", "difference", "attribution"),
                {"adversarial": URL, "difference": nullable(URL), "attribution": URL},
            ),
        },
    ),
    "Sample": obj(
        ("sample", "index", "label", "clean", "epsilons", "links"),
        {
            "sample": {**COUNT, "description": "position in the selection (the URL's <sample>)"},
            "position": COUNT,
            "index": {**COUNT, "description": "index in the dataset"},
            "label": INTEGER,
            "clean": obj(("prediction",), CONFIDENCES),
            "epsilons": array(ref("SampleEpsilon")),
            "links": links("clean", "attribution-clean", optional=("self",)),
        },
    ),
    "SampleIndex": obj(
        ("job_id", "count", "limit", "samples"),
        {
            "job_id": JOB_ID,
            "count": COUNT,
            "limit": COUNT,
            "samples": array(ref("Sample")),
            "attack": STRING,
            "norm": STRING,
            "layout": STRING,
            "attribution": {"type": "object", "description": "how the attribution maps were computed"},
        },
    ),
    "Example": obj(
        ("job_id", "kind", "job-status", "progress", "request", "links"),
        {
            "job_id": JOB_ID,
            "kind": {"type": "string", "enum": ["adversarial-example"]},
            "job-status": {"type": "string", "enum": list(STATUSES)},
            "progress": obj(("done", "total"), {"done": COUNT, "total": COUNT}),
            "created_at": TIME,
            "started_at": nullable(TIME),
            "ended_at": nullable(TIME),
            "request": obj(("trained-model", "dataset", "index"), {"index": COUNT}),
            "error": STRING,
            "details": ANY,
            "links": links("self", "evaluation"),
            "output": obj(
                ("attack",),
                {
                    "attack": {"type": "object", "nullable": True},
                    "norm-unit": STRING,
                    "index": COUNT,
                    "label": INTEGER,
                    "clean": obj(("prediction",), CONFIDENCES),
                    "epsilons": array(ref("SampleEpsilon")),
                    "links": links("clean", "attribution-clean"),
                    "error": {**STRING, "description": "why the images are missing"},
                },
                "once finished: the sample attacked at each epsilon, with its images' URLs",
            ),
        },
    ),
}
