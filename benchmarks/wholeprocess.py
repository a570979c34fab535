"""Whole processes side by side: ``python -m app evaluate`` against a script looping
``torchattacks.PGD`` over the same epsilons, and a job through a real RQ worker.

    .venv/bin/python benchmarks/wholeprocess.py [--repeats 3] [--skip-worker] [--json out.json] [--before DIR]

Case (B6 in benchmarks/RESULTS.md): the digits CNN, its 360 validation samples, Linf, epsilons
0..0.15, PGD 50 steps of 0.1 x epsilon with a random start. Both sides run as fresh
interpreters, one after the other, under the same environment (thread count included);
each side reports its own attack-only seconds, and the whole process is timed from outside.
``--before DIR`` (another checkout, e.g. ``git worktree add DIR <commit>``) also times its
``python -m app evaluate`` and its worker, alternating with this checkout's runs.
``rows()`` returns the measurements for benchmarks/run.py; ``main`` prints them.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

EPS = [0.0, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15]
STEPS, STEP = 50, 0.1

def make_assets(workdir: Path) -> dict[str, Path]:
    """The demo CNN trained once: its ONNX export (ours), its torch weights (theirs), the samples."""
    import torch

    from app.engine.assets import digits, digits_cnn, export_onnx, train, write_h5

    workdir.mkdir(parents=True, exist_ok=True)
    xtr, ytr, xva, yva = digits()
    model = train(digits_cnn(softmax=True), xtr, ytr, epochs=15)
    paths = {"onnx": workdir / "digits_cnn.onnx", "weights": workdir / "digits_cnn.pt", "data": workdir / "digits_val.h5"}
    export_onnx(model, (1, 8, 8), paths["onnx"])
    torch.save(model[:-1].state_dict(), paths["weights"])  # logits: torchattacks attacks what our loader keeps
    write_h5(paths["data"], xva, yva, n_classes=10)
    return paths


def _env(root: Path) -> dict[str, str]:
    """This environment (thread counts included), importing ``app`` from ``root``."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH", "")]))}


def _run(cmd: list[str], env: dict[str, str], root: Path = ROOT) -> tuple[float, str]:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    if done.returncode != 0:
        raise RuntimeError(f"{cmd[:4]} failed ({done.returncode}): {done.stderr[-2000:]}")
    return wall, done.stdout


def ours(paths: dict[str, Path], out: Path, root: Path = ROOT) -> dict[str, Any]:
    """``python -m app evaluate`` (of the checkout at ``root``) as a user runs it; its own timing from the output JSON."""
    cmd = [sys.executable, "-m", "app", "evaluate", "--trained-model", str(paths["onnx"]), "--dataset", str(paths["data"]),
           "--perturbation-values", ",".join(map(str, EPS)), "--attack", "pgd", "--norm", "linf", "--steps", str(STEPS),
           "--step-size", str(STEP), "--random-start", "--evaluation-mode", "complete", "--preprocessing", "{}",
           "--seed", "0", "--batch-size", "128", "--device", "cpu", "--quiet", "--output", str(out)]  # fmt: skip
    wall, _ = _run(cmd, _env(root), root)
    output = json.loads(out.read_text())
    return {"wall": wall, **output["timing"], "accuracy": output["sec-curve"]["y-values"], "notes": output["model-notes"]}


def theirs(paths: dict[str, Path], env: dict[str, str]) -> dict[str, Any]:
    """The torchattacks loop a user writes (``benchmarks/reference.py``) on the same weights, as plain torch."""
    spec = {"case": "digits", "weights": str(paths["weights"]), "dataset": str(paths["data"]), "preprocessing": {},
            "n": None, "epsilons": EPS, "attack": "pgd", "steps": STEPS, "step_size": STEP, "seed": 0}  # fmt: skip
    wall, stdout = _run([sys.executable, str(ROOT / "benchmarks" / "reference.py"), json.dumps(spec)], env)
    result = json.loads(stdout.strip().splitlines()[-1])
    return {"wall": wall, "attack-seconds": result["attack-seconds"], "accuracy": result["curve"]}


def floor(env: dict[str, str]) -> dict[str, float]:
    """What any torch process pays before its first line of work: the interpreter, then ``import torch``."""
    return {
        "python": _run([sys.executable, "-c", "pass"], env)[0],
        "import-torch": _run([sys.executable, "-c", "import torch"], env)[0],
    }


def resnet_assets(workdir: Path, n: int = 32) -> dict[str, Path]:
    """A CIFAR-sized ResNet-18 (10 classes, untrained: only its size matters here) and ``n`` samples."""
    import numpy as np
    import torch
    import torchvision

    from app.engine.assets import export_onnx, write_h5

    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=10).eval()
    x = np.random.default_rng(0).random((n, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        y = net(torch.from_numpy(x)).argmax(1).numpy()
    return {
        "onnx": export_onnx(net, (3, 32, 32), workdir / "resnet18.onnx"),
        "data": write_h5(workdir / "r18.h5", x, y, n_classes=10),
    }


# A short job on the ResNet: its fixed costs, not its attack, are what is measured.
RESNET_JOB = {"perturbation-values": [0, 0.01], "attack-params": {"steps": 2, "step-size": STEP, "random-start": True}}


def worker_jobs(paths: dict[str, Path], root: Path = ROOT, n_jobs: int = 2, **request: Any) -> list[dict[str, Any]]:
    """Redis, the API under gunicorn and one RQ worker; ``n_jobs`` evaluations of the same uploaded
    model one after the other: the first pays the model's conversion, the next ones should not.
    The services run from the checkout at ``root``."""
    from app.client import Client
    from app.demo import stop, wait_ready
    from app.redis_server import RedisServer, free_port

    appdata = Path(tempfile.mkdtemp(prefix="secev-wholeprocess-"))
    redis_server = RedisServer(appdata / "redis").start()
    port = free_port()
    env = {**_env(root), "REDIS_URL": redis_server.url, "APPDATA": str(appdata), "BIND": f"127.0.0.1:{port}"}
    logs = appdata / "logs"
    logs.mkdir()
    processes = [
        subprocess.Popen(cmd, cwd=root, env=env, stdout=open(logs / f"{name}.log", "ab"), stderr=subprocess.STDOUT)
        for name, cmd in (
            ("api", [sys.executable, "-m", "gunicorn", "-c", "python:app.gunicorn_conf"]),
            ("worker", [sys.executable, "worker.py"]),
        )
    ]
    rows = []
    try:
        client = Client(f"http://127.0.0.1:{port}")
        wait_ready(client, timeout=120)
        model = client.upload("models", paths["onnx"])
        dataset = client.upload("datasets", paths["data"])
        body = {"trained-model": model["id"], "dataset": dataset["id"], "perturbation-values": EPS, "preprocessing": {},
                "attack": "pgd", "norm": "linf", "evaluation-mode": "complete", "batch-size": 128,
                "attack-params": {"steps": STEPS, "step-size": STEP, "random-start": True}}  # fmt: skip
        for k in range(n_jobs):
            t0 = time.perf_counter()
            job = client.submit({**body, **request, "seed": k})
            output = client.wait(job["job_id"], poll=0.05)
            rows.append({"job": k + 1, "wall": time.perf_counter() - t0, **output["timing"]})
    finally:
        stop(processes)
        redis_server.stop()
    return rows


def rows(repeats: int = 3, worker: bool = True, workdir: Path | None = None, before: Path | None = None) -> dict[str, Any]:
    """Every measurement of this benchmark; medians over ``repeats`` alternating runs of each side."""
    workdir = workdir or Path(tempfile.mkdtemp(prefix="secev-wholeprocess-"))
    paths = make_assets(workdir)
    env = _env(ROOT)
    runs: dict[str, list[dict[str, Any]]] = {"ours": [], "theirs": [], "before": []}
    for _ in range(repeats):
        if before:
            runs["before"].append(ours(paths, workdir / "out.json", before))
        runs["ours"].append(ours(paths, workdir / "out.json"))
        runs["theirs"].append(theirs(paths, env))

    def med(side: str, key: str) -> float:
        return statistics.median(r.get(key, 0.0) for r in runs[side])

    result: dict[str, Any] = {
        "threads": env.get("OMP_NUM_THREADS", "default"),
        "floor": floor(env),
        "ours": {k: med("ours", k) for k in ("wall", "load-seconds", "attack-seconds", "total-seconds")},
        "theirs": {k: med("theirs", k) for k in ("wall", "attack-seconds")},
        "accuracy": {"ours": runs["ours"][0]["accuracy"], "theirs": runs["theirs"][0]["accuracy"]},
        "runs": runs,
    }
    result["ratio-wall"] = result["theirs"]["wall"] / result["ours"]["wall"]
    result["ratio-attack"] = result["theirs"]["attack-seconds"] / result["ours"]["attack-seconds"]
    result["ours"]["fixed"] = result["ours"]["wall"] - result["ours"]["attack-seconds"]
    result["theirs"]["fixed"] = result["theirs"]["wall"] - result["theirs"]["attack-seconds"]
    if before:
        result["before"] = {k: med("before", k) for k in ("wall", "load-seconds", "attack-seconds", "total-seconds")}
        result["before"]["fixed"] = result["before"]["wall"] - result["before"]["attack-seconds"]
    if worker:
        result["worker"] = worker_jobs(paths)
        resnet = resnet_assets(workdir)
        result["worker-resnet18"] = worker_jobs(resnet, ROOT, 3, **RESNET_JOB)
        if before:
            result["worker-before"] = worker_jobs(paths, before)
            result["worker-resnet18-before"] = worker_jobs(resnet, before, 3, **RESNET_JOB)
    return result


def report(res: dict[str, Any]) -> str:
    """The figures as a markdown table."""
    o, t, f = res["ours"], res["theirs"], res["floor"]
    lines = [
        f"Threads: {res['threads']}; interpreter alone {f['python']:.2f} s, `import torch` {f['import-torch']:.2f} s.",
        "",
        "| process | whole process (s) | attack only (s) | fixed = whole - attack (s) |",
        "|---|---|---|---|",
        f"| `python -m app evaluate` | {o['wall']:.2f} | {o['attack-seconds']:.2f} | {o['fixed']:.2f} "
        f"(load-seconds {o['load-seconds']:.2f}) |",
        f"| torchattacks.PGD loop | {t['wall']:.2f} | {t['attack-seconds']:.2f} | {t['fixed']:.2f} |",
        *(
            [
                f"| `python -m app evaluate`, before | {b['wall']:.2f} | {b['attack-seconds']:.2f} | {b['fixed']:.2f} "
                f"(load-seconds {b['load-seconds']:.2f}) |"
            ]
            if (b := res.get("before"))
            else []
        ),
        f"| ratio (theirs / ours) | {res['ratio-wall']:.2f}x | {res['ratio-attack']:.2f}x | |",
        "",
        "Accuracy (%): ours " + " | ".join(f"{100 * v:.1f}" for v in res["accuracy"]["ours"]),
        "; theirs " + " | ".join(f"{100 * v:.1f}" for v in res["accuracy"]["theirs"]),
    ]
    for label in ("worker-before", "worker", "worker-resnet18-before", "worker-resnet18"):
        if not res.get(label):
            continue
        lines += ["", f"| {label} job (same model) | submit to output (s) | load-seconds | attack-seconds | conversion |",
                  "|---|---|---|---|---|"]  # fmt: skip
        for r in res[label]:
            cache = r.get("conversion-cache", "none")
            lines.append(f"| {r['job']} | {r['wall']:.2f} | {r['load-seconds']:.2f} | {r['attack-seconds']:.2f} | {cache} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip-worker", action="store_true")
    parser.add_argument("--json", type=Path, help="also write every measurement here")
    parser.add_argument("--before", type=Path, help="another checkout to time alongside (e.g. the commit before a change)")
    args = parser.parse_args()
    res = rows(args.repeats, worker=not args.skip_worker, before=args.before)
    print(report(res))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
