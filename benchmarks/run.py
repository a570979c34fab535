"""Side-by-side benchmarks, all in one run: writes benchmarks/RESULTS.md.

    make bench            # or: .venv/bin/python benchmarks/run.py [--quick] [--only b1 b4 ...]

B1  our PGD curve (one sweep) vs a loop of torchattacks.PGD, 5 seeds x 3 models, whole processes (strength.py)
B2  our apgd and auto vs torchattacks.AutoAttack(version='standard'), 3 models, whole processes (strength.py)
B3  our fmn curve (one run) vs our PGD curve, digits CNN
B4  image-steps/s of our PGD step vs torchattacks' on a ResNet-18-shaped CNN (32x32x3),
    and as a fraction of this machine's measured matmul FLOP/s
B5  ResNet-50 at 224x224 on a GPU, fp32 and bf16 (only where a GPU is present)
B6  fixed costs: whole process against attack time, and jobs through a real worker (wholeprocess.py)
B7  one sharded evaluation on 1 against 2 real workers (shards.py)
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time
from pathlib import Path

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import shards  # noqa: E402
import strength  # noqa: E402
import wholeprocess  # noqa: E402

from app import schemas  # noqa: E402
from app.engine.assets import digits, digits_cnn, export_onnx, train  # noqa: E402
from app.engine.attacks import ArraySource, build  # noqa: E402
from app.engine.attacks.base import Context  # noqa: E402
from app.engine.models import Classifier, load_onnx  # noqa: E402

EPS = [0.0, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15]


def timed(fn):
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def accuracy(model, x, y, batch=256) -> float:
    with torch.no_grad():
        pred = torch.cat([model(x[i : i + batch]).argmax(1) for i in range(0, len(x), batch)])
    return float((pred == y).float().mean())


def digits_model(workdir: Path):
    """The demo's CNN, through the service's own path: ONNX export, onnx2pytorch, softmax cut."""
    xtr, ytr, xva, yva = digits()
    path = export_onnx(train(digits_cnn(softmax=True), xtr, ytr, epochs=15), (1, 8, 8), workdir / "digits.onnx")
    model, _ = load_onnx(path)
    return model, torch.from_numpy(xva), torch.from_numpy(yva)


def ours_curve(model, x, y, name, params, norm="linf", batch=128, seed=0) -> list[float]:
    attack = build(name, norm=norm, params=params, batch_size=batch, seed=seed)
    return attack.sweep(model, ArraySource(x, y), EPS, (0.0, 1.0)).accuracy(len(EPS))


def b3(model, x, y):
    pgd = ours_curve(model, x, y, "pgd", schemas.ATTACK_PARAMETERS["pgd"])
    fmn, seconds = timed(lambda: ours_curve(model, x, y, "fmn", schemas.ATTACK_PARAMETERS["fmn"]))
    return {"fmn": fmn, "pgd": pgd, "t_fmn": seconds}


def matmul_flops(device: torch.device, dtype=torch.float32, n=2048, reps=10) -> float:
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    sync(device)
    t0 = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t0)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def forward_flops(net: nn.Module, shape) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter, torch.no_grad():
        net(torch.zeros(1, *shape))
    return float(counter.get_total_flops())


def step_throughput(model, x, y, steps: int, *, ours: bool, device, autocast=False) -> float:
    """Image-steps per second of PGD at a budget so small that no sample breaks (pure step cost)."""
    eps = 1e-6
    if ours:
        attack = build("pgd", norm="linf", params={"steps": steps, "step-size": 0.1, "random-start": True, "restarts": 1})
        ctx = Context(model, (0.0, 1.0), torch.Generator(device=device).manual_seed(0), autocast)
        run = lambda: attack.perturb(ctx, x, y, eps, torch.zeros_like(x))  # noqa: E731
    else:
        import torchattacks

        atk = torchattacks.PGD(model, eps=eps, alpha=0.1 * eps, steps=steps, random_start=True)
        run = lambda: atk(x, y)  # noqa: E731
    run()
    sync(device)
    _, t = timed(lambda: (run(), sync(device)))
    return len(x) * steps / t


def b4(device, batch=64, steps=10):
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10).eval().to(device)
    frozen = Classifier(torchvision.models.resnet18(num_classes=10), None).to(device)
    frozen.network.load_state_dict(net.state_dict())
    x = torch.rand(batch, 3, 32, 32, device=device)
    with torch.no_grad():
        y = net(x).argmax(1)
    theirs = step_throughput(net, x, y, steps, ours=False, device=device)
    ours = step_throughput(frozen, x, y, steps, ours=True, device=device)
    fwd = forward_flops(net.cpu(), (3, 32, 32))
    peak = matmul_flops(device)
    # One attack step = a forward and an input-gradient backward, about 3 forward FLOPs (2 for the backward).
    return {"ours": ours, "theirs": theirs, "fwd_flops": fwd, "peak": peak, "frac": ours * 3 * fwd / peak, "batch": batch}


def b5(batch=128, steps=10):
    import torchvision

    dev = torch.device("cuda")
    net = Classifier(torchvision.models.resnet50(num_classes=1000), None).to(dev).to(memory_format=torch.channels_last)
    x = torch.rand(batch, 3, 224, 224, device=dev).contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        y = net(x).argmax(1)
    fwd = forward_flops(torchvision.models.resnet50(num_classes=1000), (3, 224, 224))
    out = {"device": torch.cuda.get_device_name(0), "fwd_flops": fwd}
    for label, ac, dtype in (("fp32", False, torch.float32), ("bf16", True, torch.bfloat16)):
        rate = step_throughput(net, x, y, steps, ours=True, device=dev, autocast=ac)
        peak = matmul_flops(dev, dtype=dtype, n=8192, reps=20)
        out[label] = {"image_steps": rate, "peak": peak, "bound": peak / (2 * fwd), "frac": rate / (peak / (2 * fwd))}
    return out


def fmt_curve(values) -> str:
    return " | ".join(f"{100 * v:.1f}" for v in values)


def write_results(res: dict, path: Path) -> None:
    m = res["machine"]
    lines = [
        "# Benchmark results",
        "",
        f"Measured {m['date']} on {m['machine']} ({m['cpus']} CPU threads used by torch, OMP_NUM_THREADS={m['omp']}), "
        f"Python {m['python']}, torch {m['torch']}, torchattacks {m['torchattacks']}. Produced by `make bench` "
        "(`benchmarks/run.py`); within each section, every comparison ran side by side in one run, on the same model, data, "
        "epsilons and budget. Accuracies are percentages; epsilons are fractions of the input range [0, 1].",
        "",
    ]
    if res.get("when"):
        # Sections re-measured with --only keep the others from results.json: say when each ran.
        lines += ["When each section ran: " + "; ".join(f"{k}: {v}" for k, v in res["when"].items()) + ".", ""]
    if res.get("strength"):
        cases = strength.cases_from(res["strength"]["cases"])
        lines += strength.markdown(cases, res["strength"]["pgd"], res["strength"]["autoattack"])
    hdr = "| | " + " | ".join(f"{e:g}" for e in EPS) + " |"
    sep = "|---" * (len(EPS) + 1) + "|"
    if res.get("b3"):
        r3 = res["b3"]
        lines += [
            f"## B3: fmn (one run, {schemas.ATTACK_PARAMETERS['fmn']['steps']} steps) vs our PGD curve, digits CNN ({res['n']} samples)",
            "",
            hdr,
            sep,
            f"| ours fmn | {fmt_curve(r3['fmn'])} |",
            f"| ours pgd (50 steps) | {fmt_curve(r3['pgd'])} |",
            "",
            f"Time: fmn {r3['t_fmn']:.2f} s for the whole curve. Largest gap to PGD: "
            f"**{100 * max(abs(a - b) for a, b in zip(r3['fmn'], r3['pgd'])):.1f} points** (goal: within 1).",
            "",
        ]
    if res.get("b4"):
        r4 = res["b4"]
        lines += [
            f"## B4: PGD step throughput, ResNet-18 on 32x32x3 (random weights), batch {r4['batch']}, {m['device']}",
            "",
            "| | image-steps/s |",
            "|---|---|",
            f"| ours (frozen parameters, input-only gradient) | {r4['ours']:.1f} |",
            f"| torchattacks.PGD | {r4['theirs']:.1f} |",
            "",
            f"Ratio: **{r4['ours'] / r4['theirs']:.2f}x**. Forward cost {r4['fwd_flops'] / 1e9:.3f} GFLOP/image; measured fp32 "
            f"matmul {r4['peak'] / 1e9:.1f} GFLOP/s; our steps reach **{100 * r4['frac']:.0f}%** of it (counting a step as 3 "
            "forward FLOPs).",
            "",
        ]
    lines += ["## B5: ResNet-50 at 224x224 on a GPU", ""]
    if res.get("b5"):
        r5 = res["b5"]
        lines += [
            f"Device: {r5['device']}.",
            "",
            "| precision | image-steps/s | bound peak/(2 x fwd FLOPs) | fraction |",
            "|---|---|---|---|",
        ]
        for label in ("fp32", "bf16"):
            v = r5[label]
            lines.append(f"| {label} | {v['image_steps']:.0f} | {v['bound']:.0f} | {100 * v['frac']:.0f}% |")
    else:
        lines.append(
            "No GPU was lent to the session that produced this file (the device tool's `status` said so), so B5 was not "
            "measured; no figure is estimated."
        )
    lines.append("")
    if res.get("b6"):
        lines += [
            "## B6: fixed costs: whole process against attack time, and jobs through a real worker",
            "",
            "The digits CNN, 360 samples, PGD 50 steps of 0.1 epsilon over 7 epsilons; medians of alternating runs. "
            "`import torch` is paid by both sides and bounds the whole-process ratio.",
            "",
            wholeprocess.report(res["b6"]),
            "",
        ]
    if res.get("b7"):
        r7 = res["b7"]
        lines += [
            "## B7: one evaluation over several workers (sharding)",
            "",
            "Real Redis, real RQ workers (one torch thread each), the request through the API's code; wall time from "
            "submit to `finished`. "
            "The last column checks that the merged curve equals the unsharded one.",
            "",
            shards.table(r7["rows"], r7["steps"]),
        ]
    path.write_text("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer samples and seeds (a smoke run)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    parser.add_argument(
        "--only",
        choices=("strength", "b3", "b4", "b5", "b6", "b7"),
        nargs="+",
        help="re-measure these; keep the others from benchmarks/results.json",
    )
    args = parser.parse_args()
    import tempfile

    import torchattacks

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    work = Path(tempfile.mkdtemp(prefix="secev-bench-"))
    model, x, y = digits_model(work)
    if args.quick:
        x, y = x[:64], y[:64]
    res: dict = {
        "machine": {
            "date": datetime.date.today().isoformat(),
            "machine": f"{platform.machine()} {platform.processor() or platform.platform()}",
            "cpus": torch.get_num_threads(),
            "omp": os.environ.get("OMP_NUM_THREADS", "unset"),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchattacks": torchattacks.__version__,
            "device": torch.cuda.get_device_name(0) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)",
        },
        "n": len(y),
    }
    raw = args.output.with_name("results.json")
    wanted = set(args.only or ("strength", "b3", "b4", "b5", "b6", "b7"))
    if args.only and raw.exists():
        res = {**json.loads(raw.read_text()), "machine": res["machine"]}

    def run_strength() -> dict:
        cases, out = strength.run(work / "strength", seeds=2 if args.quick else args.seeds, quick=args.quick)
        return {**out, "cases": strength.cases_to(cases)}

    runs = {
        "strength": run_strength,
        "b3": lambda: b3(model, x, y),
        "b4": lambda: b4(device, batch=16 if args.quick else 64),
        "b5": lambda: b5() if device.type == "cuda" else None,
        "b6": lambda: wholeprocess.rows(1 if args.quick else 3, worker=not args.quick, workdir=work / "wholeprocess"),
        "b7": lambda: {
            "steps": 50,
            "rows": shards.rows(512 if args.quick else 4096, 50, (1, 2), 256 if args.quick else 2048, threads=1),
        },
    }
    for name, run in runs.items():
        if name in wanted:
            print(f"{name.upper()} ...", flush=True)
            started = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
            res[name] = run()
            res.setdefault("when", {})[name] = f"{started}, load average {os.getloadavg()[0]:.1f} at its end"
    if not args.quick:
        raw.write_text(json.dumps(res, indent=1) + "\n")
    write_results(res, args.output)
    print(args.output.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
