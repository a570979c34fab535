"""Side-by-side benchmarks, all in one run: writes benchmarks/RESULTS.md.

    make bench            # or: .venv/bin/python benchmarks/run.py [--quick]

B1  our PGD curve (one sweep) vs a loop of torchattacks.PGD over the epsilons
B2  our apgd and auto vs torchattacks.AutoAttack(version='standard'), per epsilon
B3  our fmn curve (one run) vs B1's PGD curve
B4  image-steps/s of our PGD step vs torchattacks' on a ResNet-18-shaped CNN (32x32x3),
    and as a fraction of this machine's measured matmul FLOP/s
B5  ResNet-50 at 224x224 on a GPU, fp32 and bf16 (only where a GPU is present)
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


def torchattacks_curve(model, x, y, make_attack, eps_list, batch=128) -> list[float]:
    accs = [accuracy(model, x, y)]
    for e in eps_list[1:]:
        atk = make_attack(e)
        adv = torch.cat([atk(x[i : i + batch], y[i : i + batch]) for i in range(0, len(x), batch)])
        accs.append(accuracy(model, adv, y))
    return accs


def ours_curve(model, x, y, name, params, norm="linf", batch=128, seed=0) -> list[float]:
    attack = build(name, norm=norm, params=params, batch_size=batch, seed=seed)
    return attack.sweep(model, ArraySource(x, y), EPS, (0.0, 1.0)).accuracy(len(EPS))


def b1(model, x, y):
    import torchattacks

    params = {"steps": 50, "step-size": 0.1, "random-start": True, "restarts": 1}
    ours, t_ours = timed(lambda: ours_curve(model, x, y, "pgd", params))
    torch.manual_seed(0)
    theirs, t_theirs = timed(
        lambda: torchattacks_curve(
            model, x, y, lambda e: torchattacks.PGD(model, eps=e, alpha=0.1 * e, steps=50, random_start=True), EPS
        )
    )
    return {"ours": ours, "theirs": theirs, "t_ours": t_ours, "t_theirs": t_theirs}


def b2(model, x, y):
    import torchattacks

    apgd, t_apgd = timed(lambda: ours_curve(model, x, y, "apgd", schemas.ATTACK_PARAMETERS["apgd"]))
    auto, t_auto = timed(lambda: ours_curve(model, x, y, "auto", schemas.ATTACK_PARAMETERS["auto"]))
    aa, t_aa = timed(
        lambda: torchattacks_curve(
            model,
            x,
            y,
            lambda e: torchattacks.AutoAttack(model, norm="Linf", eps=e, version="standard", n_classes=10, seed=0),
            EPS,
        )
    )
    return {"apgd": apgd, "auto": auto, "aa": aa, "t_apgd": t_apgd, "t_auto": t_auto, "t_aa": t_aa}


def b3(model, x, y):
    return timed(lambda: ours_curve(model, x, y, "fmn", schemas.ATTACK_PARAMETERS["fmn"]))


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
        f"Measured {m['date']} on {m['machine']} ({m['cpus']} CPU threads used by torch), Python {m['python']}, torch {m['torch']}, "
        f"torchattacks {m['torchattacks']}. Produced by `make bench` (`benchmarks/run.py`); every comparison below ran side by side "
        "in this one run, on the same model, data, epsilons and budget. Accuracies are percentages; epsilons are fractions of the "
        "input range [0, 1].",
        "",
    ]
    hdr = "| | " + " | ".join(f"{e:g}" for e in EPS) + " |"
    sep = "|---" * (len(EPS) + 1) + "|"
    r1 = res["b1"]
    lines += [
        f"## B1: PGD-Linf curve, 50 steps, step 0.1 eps, digits CNN ({res['n']} samples, {len(EPS)} epsilons)",
        "",
        hdr,
        sep,
        f"| ours (one sweep) | {fmt_curve(r1['ours'])} |",
        f"| torchattacks.PGD loop | {fmt_curve(r1['theirs'])} |",
        "",
        f"Time: ours {r1['t_ours']:.2f} s, torchattacks {r1['t_theirs']:.2f} s: **{r1['t_theirs'] / r1['t_ours']:.1f}x faster**. "
        f"Largest excess of our robust accuracy over torchattacks': "
        f"**{100 * max(o - t for o, t in zip(r1['ours'], r1['theirs'])):+.1f} points** (goal: at most +0.5).",
        "",
    ]
    r2 = res["b2"]
    if r2:
        lines += [
            f"## B2: apgd and auto vs torchattacks.AutoAttack(version='standard'), Linf ({res['n2']} samples)",
            "",
            hdr,
            sep,
            f"| ours apgd (CE then targeted DLR, 100 steps each) | {fmt_curve(r2['apgd'])} |",
            f"| ours auto | {fmt_curve(r2['auto'])} |",
            f"| AutoAttack standard | {fmt_curve(r2['aa'])} |",
            "",
            f"Time: apgd {r2['t_apgd']:.1f} s ({r2['t_aa'] / r2['t_apgd']:.0f}x faster than AutoAttack), "
            f"auto {r2['t_auto']:.1f} s ({r2['t_aa'] / r2['t_auto']:.0f}x faster), AutoAttack {r2['t_aa']:.1f} s. "
            f"Largest excess over AutoAttack: apgd {100 * max(o - t for o, t in zip(r2['apgd'], r2['aa'])):+.1f} points, "
            f"auto {100 * max(o - t for o, t in zip(r2['auto'], r2['aa'])):+.1f} points (goal: at most +0.5, in at most a tenth of "
            "its time).",
            "",
        ]
    fmn, t_fmn = res["b3"]
    lines += [
        f"## B3: fmn (one run, {schemas.ATTACK_PARAMETERS['fmn']['steps']} steps) vs B1's PGD curve",
        "",
        hdr,
        sep,
        f"| ours fmn | {fmt_curve(fmn)} |",
        f"| ours PGD (B1) | {fmt_curve(r1['ours'])} |",
        "",
        f"Time: fmn {t_fmn:.2f} s for the whole curve. Largest gap to PGD: "
        f"**{100 * max(abs(a - b) for a, b in zip(fmn, r1['ours'])):.1f} points** (goal: within 1).",
        "",
    ]
    r4 = res["b4"]
    lines += [
        f"## B4: PGD step throughput, ResNet-18 on 32x32x3 (random weights), batch {r4['batch']}, {m['device']}",
        "",
        "| | image-steps/s |",
        "|---|---|",
        f"| ours (frozen parameters, input-only gradient) | {r4['ours']:.1f} |",
        f"| torchattacks.PGD | {r4['theirs']:.1f} |",
        "",
        f"Ratio: **{r4['ours'] / r4['theirs']:.2f}x**. Forward cost {r4['fwd_flops'] / 1e9:.3f} GFLOP/image; measured fp32 matmul "
        f"{r4['peak'] / 1e9:.1f} GFLOP/s; our steps reach **{100 * r4['frac']:.0f}%** of it (counting a step as 3 forward FLOPs).",
        "",
        "## B5: ResNet-50 at 224x224 on a GPU",
        "",
    ]
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
        lines.append("No GPU was available on the machine that produced this file, so B5 was not measured.")
    lines.append("")
    path.write_text("\n".join(lines))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer samples (a smoke run)")
    parser.add_argument("--b2-samples", type=int, default=200)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    parser.add_argument(
        "--only",
        choices=("b1", "b2", "b3", "b4", "b5"),
        nargs="+",
        help="re-measure these; keep the others from benchmarks/results.json",
    )
    args = parser.parse_args()
    import tempfile

    import torchattacks

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    work = Path(tempfile.mkdtemp())
    model, x, y = digits_model(work)
    if args.quick:
        x, y = x[:64], y[:64]
    res: dict = {
        "machine": {
            "date": datetime.date.today().isoformat(),
            "machine": f"{platform.machine()} {platform.processor() or platform.platform()}",
            "cpus": torch.get_num_threads(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchattacks": torchattacks.__version__,
            "device": torch.cuda.get_device_name(0) if device.type == "cuda" else f"CPU ({os.cpu_count()} cores)",
        },
        "n": len(y),
    }
    raw = args.output.with_name("results.json")
    wanted = set(args.only or ("b1", "b2", "b3", "b4", "b5"))
    if args.only and raw.exists():
        res = {**json.loads(raw.read_text()), "machine": res["machine"]}
    n2 = min(args.b2_samples, len(y))
    runs = {
        "b1": lambda: b1(model, x, y),
        "b2": lambda: b2(model, x[:n2], y[:n2]),
        "b3": lambda: b3(model, x, y),
        "b4": lambda: b4(device, batch=16 if args.quick else 64),
        "b5": lambda: b5() if device.type == "cuda" else None,
    }
    for name, run in runs.items():
        if name in wanted:
            print(f"{name.upper()} ...", flush=True)
            res[name] = run()
            res["n2"] = n2 if name == "b2" else res.get("n2", n2)
            print(json.dumps(res[name]), flush=True)
    if not args.quick:
        raw.write_text(json.dumps(res, indent=1) + "\n")
    write_results(res, args.output)
    print(args.output.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
