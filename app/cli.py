"""Command line: ``python -m app evaluate`` runs the engine in-process (no Redis);
``python -m app demo`` runs the whole service end to end on the demo assets;
``python -m app submit|status|wait|results|list|delete`` drive a running server (``app.client.cli``)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from .exceptions import ServiceError


def _floats(text: str) -> list[float]:
    return [float(v) for v in text.split(",") if v.strip()]


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


PARAM_FLAGS = {
    "steps": int,
    "step-size": float,
    "restarts": int,
    "loss": str,
    "n-target-classes": int,
    "gamma": float,
    "fmn-steps": int,
    "apgd-steps": int,
    "grid-steps": int,
}


def request_flags() -> argparse.ArgumentParser:
    """The evaluation request's flags, shared by ``evaluate`` (in this process) and ``submit`` (to a server)."""
    flags = argparse.ArgumentParser(add_help=False)
    flags.add_argument("--trained-model", required=True, type=Path, help="ONNX file (submit: or an uploaded model's id)")
    flags.add_argument("--dataset", required=True, type=Path, help="HDF5 file with samples and labels (submit: or an id)")
    flags.add_argument("--perturbation-values", type=_floats, help="comma-separated fractions of the input range")
    flags.add_argument("--perturbation-type", choices=("max-norm", "random"))
    # not a fixed list: the validation names what is accepted, plugins included (GET /api/attacks)
    flags.add_argument("--attack", help="pgd, fgsm, apgd, fmn, auto, fgm-minimal, or an attack plugin's name")
    flags.add_argument("--norm", choices=("linf", "l2"))
    for flag, kind in PARAM_FLAGS.items():
        flags.add_argument(f"--{flag}", type=kind, help="attack parameter (see README)")
    flags.add_argument("--random-start", action=argparse.BooleanOptionalAction, default=None)
    flags.add_argument("--attack-params", type=json.loads, help="JSON object of attack parameters (the flags above win)")
    flags.add_argument("--evaluation-mode", choices=("complete", "fast"))
    flags.add_argument("--indexes", type=_ints, help="comma-separated sample indexes")
    flags.add_argument("--preprocessing", type=json.loads, help="JSON, e.g. '{\"mean\": [0.5], \"std\": [0.5]}' or '{}'")
    flags.add_argument("--input-bounds", type=_floats, help="lower,upper")
    flags.add_argument("--defenses", type=json.loads, help='JSON list, e.g. \'[{"name": "jpeg-compression", "quality": 75}]\'')
    flags.add_argument("--defense-params", type=json.loads, help='JSON object, e.g. \'{"adaptive": false}\'')
    flags.add_argument("--batch-size", type=int)
    flags.add_argument("--seed", type=int)
    return flags


def build_parser() -> argparse.ArgumentParser:
    from .client.cli import add_remote_commands

    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    request = request_flags()
    ev = sub.add_parser("evaluate", parents=[request], help="run one security evaluation in this process")
    ev.add_argument("--device", help="cpu, cuda, cuda:1 (default: cuda when available)")
    ev.add_argument("--work-dir", type=Path, help="checkpoint here and resume from it")
    ev.add_argument("--output", type=Path, help="write the output JSON here (default: stdout)")
    ev.add_argument("--quiet", action="store_true", help="no progress bar")
    demo = sub.add_parser("demo", help="start Redis, the API and a worker; evaluate the demo model over HTTP")
    demo.add_argument("--appdata", type=Path, default=None)
    demo.add_argument("--output", type=Path, default=Path("demo-output"))
    add_remote_commands(sub, request)
    return parser


def request_body(args: argparse.Namespace) -> dict[str, Any]:
    body: dict[str, Any] = {"trained-model": str(args.trained_model), "dataset": str(args.dataset)}
    for field in (
        "perturbation-values",
        "perturbation-type",
        "attack",
        "norm",
        "evaluation-mode",
        "indexes",
        "preprocessing",
        "input-bounds",
        "defenses",
        "defense-params",
        "batch-size",
        "seed",
    ):
        value = getattr(args, field.replace("-", "_"))
        if value is not None:
            body[field] = value
    params = {f: getattr(args, f.replace("-", "_")) for f in PARAM_FLAGS}
    params["random-start"] = args.random_start
    params = {k: v for k, v in params.items() if v is not None}
    if args.attack_params is not None:  # anything but an object is left for the validation to name
        params = {**args.attack_params, **params} if isinstance(args.attack_params, dict) else args.attack_params
    if params:
        body["attack-params"] = params
    return body


def evaluate_command(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from . import schemas
    from .engine import plugins
    from .engine.evaluation import evaluate
    from .inspection import inspect_dataset, inspect_model
    from .storage import sha256_file

    offered = {entry.name: entry for entry in plugins.install()}  # this process runs the attack, as a worker would
    req = schemas.evaluation_request(request_body(args), plugins=offered)
    model_info = inspect_model(args.trained_model, allow_external_data=True)
    data_info = inspect_dataset(args.dataset, scan=False)
    req = schemas.bind_to_files(req, model_info, data_info)
    bar = None if args.quiet else tqdm(total=1, unit="sample-eps", file=sys.stderr)

    def progress(done: int, total: int) -> None:
        if bar is not None:
            bar.total = total
            bar.n = done
            bar.refresh()

    try:
        output = evaluate(req, args.trained_model, args.dataset, work_dir=args.work_dir, device=args.device, progress=progress)
    finally:
        if bar is not None:
            bar.close()
    output["model"] = {"id": str(args.trained_model), "sha256": sha256_file(args.trained_model)}
    output["dataset"] = {"id": str(args.dataset), "sha256": sha256_file(args.dataset)}
    text = json.dumps(output, indent=2)
    if args.output:
        args.output.write_text(text + "\n")
        print_curve(output, file=sys.stderr)
    else:
        print(text)
    return 0


def print_curve(output: dict[str, Any], file=sys.stdout, baseline: dict[str, Any] | None = None) -> None:
    xs, ys = output["sec-curve"]["x-values"], output["sec-curve"]["y-values"]
    head = f"{'epsilon':>9}  {'accuracy':>9}"
    if baseline:
        head += f"  {'random noise':>12}"
    print(head, file=file)
    base = baseline["sec-curve"]["y-values"] if baseline else None
    for i, (x, y) in enumerate(zip(xs, ys)):
        line = f"{x:>9.3f}  {y:>9.3f}"
        if base:
            line += f"  {base[i]:>12.3f}"
        print(line, file=file)
    print(
        f"sec-value {output['sec-value']:.3f} ({output['sec-level']}), {output['n-samples']} samples, {output['attack']['repr']}",
        file=file,
    )
    checks = output.get("checks")
    if checks:  # outputs from before the reliability checks have none
        warned = [c for c in checks if c["status"] != "pass"]
        verdict = "yes" if not warned else "NO"
        print(f"reliable: {verdict} ({len(checks) - len(warned)} of {len(checks)} checks pass)", file=file)
        for check in warned:
            print(f"  warn {check['name']}: {check['message']}", file=file)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if getattr(args, "remote", None):  # submit, status, wait, results, list, delete: app.client.cli
        return args.remote(args)
    try:
        if args.command == "evaluate":
            return evaluate_command(args)
        from .demo import run_demo

        return run_demo(appdata=args.appdata, output_dir=args.output)
    except ServiceError as exc:
        print(f"error: {exc.message}" + (f" ({exc.details})" if exc.details else ""), file=sys.stderr)
        return 2
