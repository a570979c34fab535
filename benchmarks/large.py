"""Large inputs: peak memory and wall time of one evaluation of a 224 x 224 x 3 uint8 dataset, at two sizes.

Builds torchvision's MobileNetV3-Small (random weights) as ONNX and a chunked uint8 HDF5 of
``max(--sizes)`` images (labelled with the model's own predictions, so every sample is attacked;
the smaller sizes are prefixes written as files of their own), then runs each size through
``app.engine.evaluation.evaluate`` exactly as the worker calls it (a work directory, input-bounds
[0, 255]), each in a fresh process so its peak resident set is its own. A thread samples
``/proc/self/status`` (anonymous and file-backed resident memory) every 20 ms; ``ru_maxrss`` gives
the kernel's peak. Writes ``benchmarks/LARGE.md`` (``make large``).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

SIDE, CHUNK = 224, 16
MEAN, STD = [123.675, 116.28, 103.53], [58.395, 57.12, 57.375]  # ImageNet's, in the [0, 255] scale


def network(name: str):
    """torchvision's MobileNetV3-Small, or a small CNN whose stride-8 stem makes a 224 x 224 attack step
    cheap on a CPU, so the data's cost shows (both random weights)."""
    import torch
    from torch import nn
    from torchvision.models import mobilenet_v3_small

    torch.manual_seed(0)
    if name == "mobilenet_v3_small":
        return mobilenet_v3_small(weights=None).eval()
    return nn.Sequential(
        nn.Conv2d(3, 16, 8, stride=8), nn.ReLU(), nn.Conv2d(16, 32, 3, stride=2), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    ).eval()


def build(folder: Path, name: str, sizes: list[int], seed: int = 0) -> Path:
    """The model (ONNX, dynamic batch) and one dataset per size; returns the model's path."""
    import h5py
    import numpy as np
    import torch

    net = network(name)
    model = folder / f"{name}.onnx"
    torch.onnx.export(
        net, torch.zeros(1, 3, SIDE, SIDE), model, dynamo=False, opset_version=17,
        input_names=["x"], output_names=["logits"], dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}},
    )
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    rng = np.random.default_rng(seed)
    n = max(sizes)
    files = {size: h5py.File(folder / f"images-{size}.h5", "w") for size in sizes}
    try:
        for size, fh in files.items():
            fh.create_dataset("samples", shape=(size, 3, SIDE, SIDE), dtype=np.uint8, chunks=(CHUNK, 3, SIDE, SIDE))
            fh.create_dataset("labels", shape=(size,), dtype=np.int64).attrs["num_classes"] = 1000 if "mobilenet" in name else 10
        for start in range(0, n, 256):  # written in slices: the builder never holds the dataset either
            stop = min(start + 256, n)
            # Smooth random images (noise upsampled), a little closer to photographs than white noise.
            small = rng.integers(0, 256, size=(stop - start, 3, SIDE // 8, SIDE // 8)).astype(np.float32)
            x = torch.nn.functional.interpolate(torch.from_numpy(small), size=(SIDE, SIDE), mode="bilinear")
            x = x.round().clamp(0, 255)
            with torch.no_grad():
                y = net((x - mean) / std).argmax(1).numpy()
            for size, fh in files.items():
                if start < size:
                    end = min(stop, size)
                    fh["samples"][start:end] = x[: end - start].numpy().astype(np.uint8)
                    fh["labels"][start:end] = y[: end - start]
    finally:
        for fh in files.values():
            fh.close()
    return model


class Sampler(threading.Thread):
    """Peak anonymous and file-backed resident memory of this process, sampled every 20 ms."""

    def __init__(self) -> None:
        super().__init__(daemon=True)
        self.peak = {"RssAnon": 0, "RssFile": 0, "VmRSS": 0}
        self.stop = threading.Event()

    def sample(self) -> None:
        for line in Path("/proc/self/status").read_text().splitlines():
            key, _, value = line.partition(":")
            if key in self.peak:
                self.peak[key] = max(self.peak[key], int(value.split()[0]) * 1024)

    def run(self) -> None:
        while not self.stop.wait(0.02):
            self.sample()


def run_one(model: Path, dataset: Path, attack: str, epsilons: list[float], batch: int, steps: int) -> dict:
    """One evaluation in this process, as the worker runs it; memory and time measured."""
    import torch

    from app import schemas
    from app.engine.evaluation import evaluate

    torch.set_num_threads(max(1, torch.get_num_threads()))
    body = {
        "trained-model": "m", "dataset": "d", "attack": attack, "perturbation-values": epsilons,
        "preprocessing": {"mean": MEAN, "std": STD}, "input-bounds": [0, 255], "input-layout": "nchw", "batch-size": batch,
    }
    if attack == "pgd":
        body["attack-params"] = {"steps": steps}
    request = schemas.evaluation_request(body)
    sampler = Sampler()
    sampler.sample()
    before = dict(sampler.peak)
    sampler.start()
    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="secev-large-") as work:
        out = evaluate(request, model, dataset, work_dir=Path(work) / "job")
    wall = time.perf_counter() - t0
    sampler.stop.set()
    sampler.join()
    sampler.sample()
    return {
        "n-samples": out["n-samples"],
        "wall-seconds": round(wall, 1),
        "timing": out["timing"],
        "batch-size": out["attack"]["batch-size"],
        "device": out["device"],
        "curve": out["sec-curve"]["y-values"],
        "rss-before-mb": round(before["VmRSS"] / 2**20),
        "peak-rss-mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "peak-anon-mb": round(sampler.peak["RssAnon"] / 2**20),
        "peak-file-mb": round(sampler.peak["RssFile"] / 2**20),
    }


def report(results: list[dict], args: argparse.Namespace, dataset_mb: dict[int, float]) -> str:
    lines = [
        "# Large inputs: memory does not grow with the dataset",
        "",
        f"`benchmarks/large.py --model {args.model}`: {args.model} (random weights) as ONNX, uint8 images of "
        f"3 x {SIDE} x {SIDE} in a chunked HDF5 (chunks of {CHUNK} images), `input-bounds` [0, 255], ImageNet mean/std, "
        f"attack `{args.attack}`" + (f" ({args.steps} steps)" if args.attack == "pgd" else "")
        + f", epsilons {args.epsilons} (fractions of the range), requested batch {args.batch}. Each size runs in a fresh "
        "process through `app.engine.evaluation.evaluate` with a work directory, as the worker calls it. Labels are the "
        "model's own predictions, so every sample is attacked.",
        "",
        f"Machine: {platform.machine()}, {platform.processor() or 'cpu'}, Python {platform.python_version()}, "
        f"{args.threads} torch thread(s). Peak RSS is `ru_maxrss`; anonymous and file-backed resident memory are sampled "
        "from `/proc/self/status` every 20 ms.",
        "",
        "| samples | dataset (uint8 on disk / as float32) | wall s | attack s | batch | peak RSS MB | peak anon MB "
        "| peak file-backed MB | RSS before MB | curve |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        n = r["n-samples"]
        lines.append(
            f"| {n} | {dataset_mb[n]:.0f} MB / {n * 3 * SIDE * SIDE * 4 / 2**20:.0f} MB | {r['wall-seconds']} "
            f"| {r['timing']['attack-seconds']} | {r['batch-size']} | {r['peak-rss-mb']} | {r['peak-anon-mb']} "
            f"| {r['peak-file-mb']} | {r['rss-before-mb']} | {', '.join(f'{v:.3f}' for v in r['curve'])} |"
        )
    small, large = results[0], results[-1]
    growth = large["peak-rss-mb"] - small["peak-rss-mb"]
    lines += [
        "",
        f"From {small['n-samples']} to {large['n-samples']} samples the peak RSS changes by {growth:+d} MB, while the "
        f"dataset grows by {(large['n-samples'] - small['n-samples']) * 3 * SIDE * SIDE * 4 / 2**20:.0f} MB as float32: "
        "the evaluation holds one batch of samples (read by index from HDF5) and one batch of warm-start perturbations "
        "(read and written by row in a file, never mapped), so its memory depends on the batch and the model, not on the "
        "number of samples. The per-sample arrays in RAM are a few bytes per sample (outcome, norm, label, index).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 3000])
    parser.add_argument("--model", default="mobilenet_v3_small", choices=["mobilenet_v3_small", "small-cnn"])
    parser.add_argument("--attack", default="fgsm", choices=["fgsm", "pgd"])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--epsilons", type=float, nargs="+", default=[0.0, 0.001, 0.004])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--folder", type=Path, default=None, help="keep the built files here (default: a temporary folder)")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "LARGE.md")
    parser.add_argument("--append", action="store_true", help="add this run's table to --out")
    parser.add_argument("--run", nargs=2, metavar=("MODEL", "DATASET"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run:  # the child: one evaluation, its figures as JSON on the last line
        import torch

        torch.set_num_threads(args.threads)
        print(json.dumps(run_one(Path(args.run[0]), Path(args.run[1]), args.attack, args.epsilons, args.batch, args.steps)))
        return
    with tempfile.TemporaryDirectory(prefix="secev-large-build-") as tmp:
        folder = args.folder or Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        sizes = sorted(set(args.sizes))
        folder = folder / args.model
        folder.mkdir(parents=True, exist_ok=True)
        model = folder / f"{args.model}.onnx"
        if not (model.exists() and all((folder / f"images-{s}.h5").exists() for s in sizes)):
            t0 = time.perf_counter()
            model = build(folder, args.model, sizes)
            print(f"built model and datasets in {time.perf_counter() - t0:.0f} s", flush=True)
        results, dataset_mb = [], {}
        for size in sizes:
            dataset = folder / f"images-{size}.h5"
            dataset_mb[size] = dataset.stat().st_size / 2**20
            cmd = [sys.executable, __file__, "--run", str(model), str(dataset), "--attack", args.attack, "--steps",
                   str(args.steps), "--batch", str(args.batch), "--threads", str(args.threads), "--epsilons",
                   *map(str, args.epsilons)]
            done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)
            results.append(json.loads(done.stdout.strip().splitlines()[-1]))
            print(json.dumps(results[-1]), flush=True)
        text = report(results, args, dataset_mb)
        if args.append and args.out.exists():
            text = args.out.read_text() + "\n" + text.split("\n", 2)[2]  # under the first run's title
        args.out.write_text(text)
        print(text)


if __name__ == "__main__":
    main()
