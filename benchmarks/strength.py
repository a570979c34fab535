"""Strength and whole-process speed against the reference libraries, on three models (``cases.py``).

    .venv/bin/python benchmarks/strength.py [--quick] [--seeds 5]   # or as part of `make bench`

Every arm is a whole process, started the way a user starts it: ours is ``python -m app
evaluate`` (conversion, checks, clean pass, the whole sweep), the reference is
``benchmarks/reference.py`` looping torchattacks over the epsilons on the same converted model.
Each reports its attack time apart from its load time.

- PGD: ours ``pgd`` against ``torchattacks.PGD`` with the same steps and step size, 5 seeds.
- AutoAttack: ours ``apgd`` and ``auto`` against ``torchattacks.AutoAttack(version='standard')``, seed 0.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from cases import ROOT, Case, make_cases

PGD = {"steps": 50, "step-size": 0.1}
SAMPLES = {"digits": 360, "rgb16": 200, "resnet32": 96}
AA_SAMPLES = {"digits": 64, "rgb16": 64, "resnet32": 32}


def _run(cmd: list[str]) -> tuple[str, float]:
    t0 = time.perf_counter()
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    wall = time.perf_counter() - t0
    if done.returncode:
        raise RuntimeError(f"{cmd[:4]} failed ({done.returncode}): {done.stderr[-2000:]}")
    return done.stdout, wall


def ours(case: Case, attack: str, params: dict[str, Any], seed: int, n: int, work: Path) -> dict[str, Any]:
    """``python -m app evaluate`` as a whole process."""
    out = work / f"ours-{case.name}-{attack}-{seed}-{n}.json"
    cmd = [sys.executable, "-m", "app", "evaluate", "--trained-model", str(case.model), "--dataset", str(case.dataset)]
    cmd += ["--attack", attack, "--norm", "linf", "--perturbation-values", ",".join(f"{e:g}" for e in case.epsilons)]
    cmd += ["--indexes", ",".join(str(i) for i in range(n)), "--preprocessing", json.dumps(case.preprocessing)]
    cmd += ["--seed", str(seed), "--batch-size", "128", "--output", str(out), "--quiet", "--device", "cpu"]
    for key, value in params.items():
        cmd += [f"--{key}", str(value)]
    _, wall = _run(cmd)
    result = json.loads(out.read_text())
    timing = result["timing"]
    return {
        "curve": result["sec-curve"]["y-values"],
        "wall": wall,
        "attack": timing["attack-seconds"],
        "load": timing["load-seconds"],
    }


def reference(case: Case, attack: str, seed: int, n: int) -> dict[str, Any]:
    """``benchmarks/reference.py`` (a torchattacks loop) as a whole process."""
    spec = {
        "case": case.name,
        "weights": str(case.weights),
        "dataset": str(case.dataset),
        "preprocessing": case.preprocessing,
        "n": n,
        "epsilons": case.epsilons,
        "attack": attack,
        "steps": PGD["steps"],
        "step_size": PGD["step-size"],
        "seed": seed,
    }
    stdout, wall = _run([sys.executable, str(ROOT / "benchmarks" / "reference.py"), json.dumps(spec)])
    result = json.loads(stdout.strip().splitlines()[-1])
    return {"curve": result["curve"], "wall": wall, "attack": result["attack-seconds"], "load": result["load-seconds"]}


def run_pgd(cases: list[Case], seeds: int, work: Path, quick: bool) -> list[dict[str, Any]]:
    rows = []
    for case in cases:
        n = 48 if quick else SAMPLES[case.name]
        for seed in range(seeds):
            a = ours(case, "pgd", PGD, seed, n, work)
            b = reference(case, "pgd", seed, n)
            rows.append({"case": case.name, "seed": seed, "n": n, "ours": a, "theirs": b})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def run_autoattack(cases: list[Case], work: Path, quick: bool) -> list[dict[str, Any]]:
    rows = []
    for case in cases:
        n = 16 if quick else AA_SAMPLES[case.name]
        row = {"case": case.name, "seed": 0, "n": n}
        row["apgd"] = ours(case, "apgd", {}, 0, n, work)
        row["auto"] = ours(case, "auto", {}, 0, n, work)
        row["aa"] = reference(case, "autoattack", 0, n)
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def points(values: list[float]) -> str:
    return " | ".join(f"{100 * v:.1f}" for v in values)


def excess(a: list[float], b: list[float]) -> list[float]:
    return [100 * (x - y) for x, y in zip(a, b)]


def mean(rows: list[list[float]]) -> list[float]:
    return [sum(col) / len(col) for col in zip(*rows)]


def markdown(cases: list[Case], pgd: list[dict[str, Any]], aa: list[dict[str, Any]]) -> list[str]:
    """B1 (PGD, per seed and epsilon) and B2 (AutoAttack) sections for RESULTS.md."""
    lines = [
        f"## B1: `pgd` against torchattacks.PGD ({PGD['steps']} steps, step {PGD['step-size']} x epsilon, Linf), "
        f"{len({r['seed'] for r in pgd})} seeds, three models",
        "",
        "Each cell is our robust accuracy minus torchattacks' (points; positive = ours is weaker). Both sides are whole "
        "processes on the same converted model and samples; times are their sums over the seeds.",
        "",
    ]
    worst = []
    for case in cases:
        rows = [r for r in pgd if r["case"] == case.name]
        if not rows:
            continue
        diffs = [excess(r["ours"]["curve"], r["theirs"]["curve"]) for r in rows]
        avg = mean(diffs)
        worst.append((case.name, max(avg)))
        t = {side: {k: sum(r[side][k] for r in rows) for k in ("wall", "attack")} for side in ("ours", "theirs")}
        lines += [
            f"### {case.name}: {case.description}, {rows[0]['n']} samples",
            "",
            "| seed | " + " | ".join(f"{e:g}" for e in case.epsilons) + " | ours s (attack) | torchattacks s (attack) |",
            "|---" * (len(case.epsilons) + 3) + "|",
        ]
        for r, d in zip(rows, diffs):
            lines.append(
                f"| {r['seed']} | "
                + " | ".join(f"{v:+.1f}" for v in d)
                + f" | {r['ours']['wall']:.1f} ({r['ours']['attack']:.1f}) "
                f"| {r['theirs']['wall']:.1f} ({r['theirs']['attack']:.1f}) |"
            )
        lines += [
            "| **mean** | " + " | ".join(f"**{v:+.2f}**" for v in avg) + " | | |",
            f"| ours, mean accuracy | {points(mean([r['ours']['curve'] for r in rows]))} | | |",
            f"| torchattacks, mean accuracy | {points(mean([r['theirs']['curve'] for r in rows]))} | | |",
            "",
            f"Largest mean excess: **{max(avg):+.2f} points** (goal: at most +0.5). Whole process: ours {t['ours']['wall']:.1f} s, "
            f"torchattacks {t['theirs']['wall']:.1f} s, **{t['theirs']['wall'] / t['ours']['wall']:.1f}x**; attack time alone: "
            f"{t['ours']['attack']:.1f} s against {t['theirs']['attack']:.1f} s, "
            f"**{t['theirs']['attack'] / t['ours']['attack']:.1f}x** (goal: 5x).",
            "",
        ]
    if aa:
        lines += [
            "## B2: `apgd` and `auto` against torchattacks.AutoAttack(version='standard'), Linf, seed 0",
            "",
            "Accuracies in percent; times are whole processes, attack time in brackets.",
            "",
        ]
        for row in aa:
            case = next(c for c in cases if c.name == row["case"])
            ex = {k: max(excess(row[k]["curve"], row["aa"]["curve"])) for k in ("apgd", "auto")}
            lines += [
                f"### {case.name}: {case.description}, {row['n']} samples",
                "",
                "| | " + " | ".join(f"{e:g}" for e in case.epsilons) + " | seconds (attack) |",
                "|---" * (len(case.epsilons) + 2) + "|",
            ]
            for key, label in (("apgd", "ours apgd"), ("auto", "ours auto"), ("aa", "AutoAttack standard")):
                r = row[key]
                lines.append(f"| {label} | {points(r['curve'])} | {r['wall']:.1f} ({r['attack']:.1f}) |")
            lines += [
                "",
                f"Largest excess over AutoAttack: apgd {ex['apgd']:+.1f}, auto {ex['auto']:+.1f} points (goal: at most +0.5). "
                f"auto is **{row['aa']['wall'] / row['auto']['wall']:.1f}x** faster as whole processes, "
                f"{row['aa']['attack'] / row['auto']['attack']:.1f}x in attack time (goal: 10x).",
                "",
            ]
    return lines


def cases_to(cases: list[Case]) -> list[dict[str, Any]]:
    return [{**vars(c), "model": str(c.model), "dataset": str(c.dataset)} for c in cases]


def cases_from(raw: list[dict[str, Any]]) -> list[Case]:
    return [Case(**{**c, "model": Path(c["model"]), "dataset": Path(c["dataset"])}) for c in raw]


def run(work: Path, *, seeds: int = 5, quick: bool = False, autoattack: bool = True) -> tuple[list[Case], dict[str, Any]]:
    cases = make_cases(work / "cases", quick=quick)
    pgd = run_pgd(cases, seeds, work, quick)
    aa = run_autoattack(cases, work, quick) if autoattack else []
    return cases, {"pgd": pgd, "autoattack": aa}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--no-autoattack", action="store_true")
    parser.add_argument("--work", type=Path, default=None)
    parser.add_argument("--output", type=Path, default=ROOT / "benchmarks" / "strength.json")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="secev-strength-"))
    cases, res = run(work, seeds=args.seeds, quick=args.quick, autoattack=not args.no_autoattack)
    args.output.write_text(json.dumps(res, indent=1) + "\n")
    print("\n".join(markdown(cases, res["pgd"], res["autoattack"])))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
