"""The compatibility matrix (issue 8): torchvision classifiers exported the ways people export them.

    make compat           # or: .venv/bin/python benchmarks/compat.py [--size 64] [--archs a,b] [--quick] [--full] [--service]

Each architecture is built with torchvision's default initialization and with trained-like
weights (batch-norm statistics randomized), then exported through TorchScript (``dynamo=False``,
opsets 11, 13, 17, dynamic batch and fixed batch 1) and through dynamo (``dynamo=True``: a
single file with a dynamic batch, and torch's defaults, fixed batch with external data).
``PLAN`` picks the modes of the default run (``--full``: all eight for both weight kinds).
Every case is converted twice, side by side in this run: "before" is plain onnx2pytorch on the
raw file (the state before issue 8), "after" is the service's pipeline (``load_onnx``). A load
passes when it runs at batch 1 and 4 with logits matching onnxruntime and input gradients whose
cosine to the source torch model's is at least 0.999. ``--service`` also evaluates every case
that loads through the live service (see ``compat_service.py``). Writes benchmarks/compat.json
and benchmarks/COMPAT.md.
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torchvision
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from app.engine.models import load_onnx  # noqa: E402

# One architecture of each torchvision classification family, the light ones first.
ARCHS = [
    "resnet18", "mobilenet_v2", "mobilenet_v3_small", "mnasnet0_5", "shufflenet_v2_x0_5", "squeezenet1_1", "efficientnet_b0",
    "regnet_y_400mf", "googlenet", "densenet121", "inception_v3", "convnext_tiny", "swin_t", "vit_b_16", "alexnet", "vgg11",
    "maxvit_t",
]  # fmt: skip
QUICK_ARCHS = ["resnet18", "mobilenet_v3_small", "shufflenet_v2_x0_5", "squeezenet1_1", "densenet121", "vit_b_16"]
MODES = ["ts11-dyn", "ts11-b1", "ts13-dyn", "ts13-b1", "ts17-dyn", "ts17-b1", "dynamo-dyn", "dynamo-ext"]
# The default run, sized for 2 shared CPU cores: each family of failure once per architecture (Identity-fed
# initializers: any TorchScript export; training_mode: opset 17; a baked-in batch: ts17-b1 and dynamo-ext;
# external data: dynamo-ext). Torchvision's own initialization only adds Identity-fed initializers.
PLAN = {
    "default": ["ts13-dyn"],
    "randomized": ["ts11-dyn", "ts17-b1", "dynamo-ext"],
    "calibrated": ["ts11-dyn", "ts17-b1", "dynamo-ext"],
}
QUICK_MODES = ["ts13-dyn", "ts17-b1", "dynamo-ext"]
# default: torchvision's initialization; randomized: batch-norm statistics randomized (the issue's
# "trained-like"); calibrated: statistics of real activations, jittered (see ``trained_like``).
WEIGHTS = ["default", "randomized", "calibrated"]
CLASSES = 10
LOGIT_TOL = 1e-3  # max |torch - onnxruntime|, relative to the logits' scale (at least 1)
COSINE_GOAL = 0.999
STEP_BATCH = 8


def trained_like(model: nn.Module, sample: torch.Tensor | None = None) -> nn.Module:
    """Random weights with batch-norm statistics that are not an identity, and zero-initialized layers
    (ViT's head) made random. With ``sample``, the statistics are those of the sample's activations,
    jittered, as training leaves them: a deep random network whose statistics are merely randomized
    (the default without it) can become nearly constant, with gradients at rounding level (1e-14)."""
    norms = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    for module in model.modules():
        if isinstance(module, nn.Linear) and not module.weight.any():
            nn.init.normal_(module.weight, std=0.02)
    if sample is None:
        for module in norms:
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
        return model.eval()
    for module in norms:
        module.reset_running_stats()
        module.momentum = None  # a cumulative average: one batch sets the statistics exactly
    model.train()
    with torch.no_grad():
        model(sample)
    for module in norms:
        module.momentum = 0.1
        module.running_mean.add_(torch.empty_like(module.running_mean).uniform_(-0.1, 0.1) * module.running_var.sqrt())
        module.running_var.mul_(torch.empty_like(module.running_var).uniform_(0.8, 1.25))
    return model.eval()


def min_size(arch: str) -> int:
    """The smallest input an architecture takes (inception_v3: 75; MaxViT: its 7x7 windows after /32)."""
    return {"inception_v3": 75, "maxvit_t": 224, "swin_t": 32, "vit_b_16": 16}.get(arch, 32)


def input_size(arch: str, size: int) -> int:
    """``size``, raised to the architecture's minimum; ViT needs a multiple of its 16-pixel patches."""
    size = max(size, min_size(arch))
    return size - size % 16 if arch == "vit_b_16" else size


def build(arch: str, weights: str, size: int, seed: int = 0) -> nn.Module:
    """The architecture with torchvision's initialization (no download), or trained-like weights."""
    torch.manual_seed(seed)
    options: dict[str, Any] = {"weights": None, "num_classes": CLASSES}
    if arch == "vit_b_16":
        options["image_size"] = size
    if arch in ("inception_v3", "googlenet"):
        options.update(aux_logits=False, init_weights=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = getattr(torchvision.models, arch)(**options).eval()
    if weights == "default":
        return model
    return trained_like(model, inputs(16, size, 123) if weights == "calibrated" else None)


def export(model: nn.Module, mode: str, size: int, folder: Path) -> Path:
    """Export as ``mode`` says into ``folder``; returns the graph's path (a data file may lie beside it)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "model.onnx"
    x = torch.rand(1, 3, size, size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if mode.startswith("ts"):
            opset, dynamic = int(mode[2:4]), mode.endswith("dyn")
            torch.onnx.export(
                model, (x,), str(path), dynamo=False, opset_version=opset, input_names=["x"], output_names=["y"],
                dynamic_axes={"x": {0: "n"}, "y": {0: "n"}} if dynamic else None,
            )  # fmt: skip
        elif mode == "dynamo-dyn":
            shapes = {"x": {0: torch.export.Dim("batch", min=1, max=1024)}}
            torch.onnx.export(model, (x,), str(path), dynamo=True, external_data=False, dynamic_shapes=shapes)
        elif mode == "dynamo-ext":  # torch's defaults: fixed shapes, weights in model.onnx.data
            torch.onnx.export(model, (x,), str(path), dynamo=True, external_data=True)
        else:
            raise ValueError(f"unknown export mode {mode}")
    return path


class Reference:
    """onnxruntime on the exported file; a fixed-batch file runs one sample at a time."""

    def __init__(self, path: Path) -> None:
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        declared = self.session.get_inputs()[0]
        self.name, self.fixed = declared.name, declared.shape[0] == 1

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if self.fixed:
            return np.concatenate([self.session.run(None, {self.name: x[i : i + 1]})[0] for i in range(len(x))])
        return self.session.run(None, {self.name: x})[0]


def inputs(batch: int, size: int, seed: int) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(seed))


def input_gradient(network: nn.Module, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The gradient an attack follows: of the cross-entropy, with respect to the input."""
    x = x.clone().requires_grad_(True)
    out = network(x)
    out = out[0] if isinstance(out, (list, tuple)) else out
    nn.functional.cross_entropy(out.flatten(1), labels).backward()
    return x.grad


def step_ms(network: nn.Module, size: int, reps: int = 2) -> float:
    """Milliseconds of one attack step (forward and input-gradient backward) at batch ``STEP_BATCH``."""
    x, labels = inputs(STEP_BATCH, size, 9), torch.arange(STEP_BATCH) % CLASSES
    input_gradient(network, x, labels)  # warm-up
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        input_gradient(network, x, labels)
        times.append(time.perf_counter() - t0)
    return 1000 * float(np.median(times))


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    """Cosine of two gradients in float64, scale-free: a random network whose output barely depends on
    its input has gradients near 1e-12, where ``cosine_similarity``'s epsilon would swamp them."""
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        return float("nan")
    a, b = a.double(), b.double()
    na, nb = a.norm(), b.norm()
    if na == 0 or nb == 0:
        return 1.0 if na == nb else 0.0
    return float((a / na) @ (b / nb))


def check(network: nn.Module, source: nn.Module, reference: Reference, size: int) -> dict[str, Any]:
    """Logits against onnxruntime at batch 1 and 4, and the input-gradient cosine against ``source``."""
    out: dict[str, Any] = {"diff": {}, "cosine": None}
    for batch in (1, 4):
        x = inputs(batch, size, batch)
        with torch.no_grad():
            logits = network(x)
        logits = (logits[0] if isinstance(logits, (list, tuple)) else logits).flatten(1).numpy()
        expected = reference(x.numpy())
        if logits.shape != expected.shape:
            raise ValueError(f"batch {batch}: logits {list(logits.shape)} but onnxruntime gives {list(expected.shape)}")
        scale = max(1.0, float(np.abs(expected).max()))
        out["diff"][batch] = float(np.abs(logits - expected).max()) / scale
    x, labels = inputs(4, size, 4), torch.tensor([0, 3, 5, 9])
    ours, theirs = input_gradient(network, x, labels).flatten(), input_gradient(source, x, labels).flatten()
    out["source_grad_norm"] = float(theirs.norm())
    out["cosine"] = cosine(ours, theirs)
    out["ok"] = max(out["diff"].values()) <= LOGIT_TOL and out["cosine"] >= COSINE_GOAL
    if not out["ok"]:
        out["error"] = f"logit diff {max(out['diff'].values()):.2g}, gradient cosine {out['cosine']:.4f}"
    return out


def before(path: Path) -> nn.Module:
    """The state before issue 8: plain onnx2pytorch on the raw file, no rewrites."""
    from onnx2pytorch import ConvertModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return ConvertModel(onnx.load(str(path)), experimental=True).eval()


def after(path: Path) -> tuple[nn.Module, dict[str, Any]]:
    """The service's pipeline, exactly as a worker loads an uploaded model."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_onnx(path)


def attempt(fn: Callable[[], Any]) -> tuple[Any, str | None]:
    """``fn()`` and no error, or None and the error's first line."""
    try:
        return fn(), None
    except Exception as exc:  # every failure of a converter is a result here, not a crash of the run
        return None, f"{type(exc).__name__}: {str(exc).strip().splitlines()[0] if str(exc).strip() else ''}"[:300]


def run_case(
    source: nn.Module, mode: str, size: int, folder: Path, torch_step_ms: float | None = None, *, timed: bool = True
) -> dict[str, Any]:
    """Export ``source`` as ``mode`` and measure both conversions; leaves the files in ``folder``.
    ``torch_step_ms``: the source's step time when already measured (it is the same for every mode);
    ``timed=False`` skips the step timings (for tests)."""
    case: dict[str, Any] = {"mode": mode}
    t0 = time.perf_counter()
    path, error = attempt(lambda: export(source, mode, size, folder))
    case["export"] = {"ok": error is None, "s": round(time.perf_counter() - t0, 2), **({"error": error} if error else {})}
    if error:
        return case
    case["files"] = sorted(p.name for p in folder.iterdir())
    reference, error = attempt(lambda: Reference(path))
    if error:
        case["export"].update(ok=False, error=f"onnxruntime: {error}")
        return case
    for label, load in (("before", lambda: (before(path), {})), ("after", lambda: after(path))):
        loaded, error = attempt(load)
        if error:
            case[label] = {"ok": False, "stage": "load", "error": error}
            continue
        network, notes = loaded
        result, error = attempt(lambda: check(network, source, reference, size))  # noqa: B023
        case[label] = result if result else {"ok": False, "stage": "run", "error": error}
        case[label]["stage"] = case[label].get("stage", "check")
        if label == "after":
            case[label]["notes"] = notes
            case[label]["batch-1-only"] = bool(notes.get("batch-1-only"))
            if case[label]["ok"] and timed:
                case[label]["step_ms"] = round(step_ms(network, size), 1)
    if timed:
        case["torch_step_ms"] = torch_step_ms if torch_step_ms is not None else round(step_ms(source, size), 1)
    return case


def machine() -> dict[str, Any]:
    import onnx2pytorch

    return {
        "date": datetime.date.today().isoformat(),
        "machine": f"{platform.machine()} {platform.platform()}",
        "cpus": torch.get_num_threads(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "onnx": onnx.__version__,
        "onnxruntime": ort.__version__,
        "onnx2pytorch": getattr(onnx2pytorch, "__version__", "0.6.0"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=64, help="input resolution (raised where an architecture needs more)")
    parser.add_argument("--archs", default="", help="comma-separated architectures (default: all)")
    parser.add_argument("--modes", default="", help=f"comma-separated export modes among {','.join(MODES)}")
    parser.add_argument("--weights", default=",".join(WEIGHTS), help="among default, randomized, calibrated")
    parser.add_argument("--full", action="store_true", help="every export mode for both weight kinds (default: PLAN)")
    parser.add_argument("--quick", action="store_true", help="a few architectures and modes, calibrated weights only")
    parser.add_argument("--service", action="store_true", help="also evaluate every case that loads through the live service")
    parser.add_argument("--resume", action="store_true", help="keep the cases already in the JSON file")
    parser.add_argument("--out", default=str(ROOT / "benchmarks"), help="folder for compat.json and COMPAT.md")
    args = parser.parse_args(argv)
    warnings.filterwarnings("ignore")  # onnx2pytorch and the exporters warn on every call
    archs = args.archs.split(",") if args.archs else (QUICK_ARCHS if args.quick else ARCHS)
    modes = args.modes.split(",") if args.modes else (QUICK_MODES if args.quick else None)
    weights = ["calibrated"] if args.quick else args.weights.split(",")
    out = Path(args.out)
    json_path = out / "compat.json"
    results: dict[str, Any] = {"machine": machine(), "size": args.size, "cases": []}
    if args.resume and json_path.exists():
        results["cases"] = json.loads(json_path.read_text())["cases"]
    done = {(c["arch"], c["weights"], c["mode"]) for c in results["cases"]}
    service = None
    if args.service:
        from compat_service import Service

        service = Service(Path(tempfile.mkdtemp(prefix="compat-appdata-")))
    try:
        for arch in archs:
            size = input_size(arch, args.size)
            for kind in weights:
                source = build(arch, kind, size)
                source_step = round(step_ms(source, size), 1)
                for mode in modes or (MODES if args.full else PLAN[kind]):
                    if (arch, kind, mode) in done:
                        continue
                    with tempfile.TemporaryDirectory(prefix="compat-") as tmp:
                        t0 = time.perf_counter()
                        try:
                            case = {
                                "arch": arch,
                                "weights": kind,
                                "size": size,
                                **run_case(source, mode, size, Path(tmp), source_step),
                            }
                        except Exception:  # a crash of one case is recorded, the matrix goes on
                            case = {"arch": arch, "weights": kind, "size": size, "mode": mode, "crash": traceback.format_exc()}
                        if service and case.get("after", {}).get("stage") in ("check",):
                            case["service"] = service.evaluate(Path(tmp), size, Reference(Path(tmp) / "model.onnx"))
                        case["s"] = round(time.perf_counter() - t0, 1)
                    results["cases"].append(case)
                    print(summary_line(case), flush=True)
                    json_path.write_text(json.dumps(results, indent=1) + "\n")
    finally:
        if service:
            service.close()
    from compat_report import write_markdown

    write_markdown(results, out / "COMPAT.md")
    print(f"wrote {json_path} and {out / 'COMPAT.md'}")
    return 0


def summary_line(case: dict[str, Any]) -> str:
    def verdict(key: str) -> str:
        part = case.get(key) or {}
        return "ok" if part.get("ok") else f"FAIL({part.get('error', case.get('export', {}).get('error', 'crash'))[:80]})"

    svc = case.get("service")
    svc_text = f" service={'ok' if svc and svc.get('ok') else svc}" if svc is not None else ""
    return f"{case['arch']:<20} {case['weights']:<8} {case['mode']:<11} before={verdict('before')} after={verdict('after')}{svc_text} {case.get('s')}s"


if __name__ == "__main__":
    sys.exit(main())
