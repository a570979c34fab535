"""benchmarks/COMPAT.md from the cases of benchmarks/compat.json (``compat.py`` calls it; it can be rerun alone).

.venv/bin/python benchmarks/compat_report.py [benchmarks/compat.json]
"""

from __future__ import annotations

import json
import re
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any


def passed(case: dict[str, Any], key: str) -> bool:
    return bool((case.get(key) or {}).get("ok"))


def reason(case: dict[str, Any], key: str) -> str:
    """A failure's message with the numbers that vary between architectures taken out, to group them."""
    if "crash" in case:
        return "benchmark crash: " + case["crash"].strip().splitlines()[-1][:120]
    if not case.get("export", {}).get("ok"):
        return "export: " + case.get("export", {}).get("error", "")[:120]
    error = (case.get(key) or {}).get("error", "")
    norm = (case.get(key) or {}).get("source_grad_norm")
    if norm is not None and norm < 1e-9 and "cosine" in error:
        return f"{case[key].get('stage', '')}: the source model's own gradient is at rounding level (norm < 1e-9), cosine meaningless"
    error = re.sub(r"\[[0-9, ]+\]", "[...]", error)
    error = re.sub(r"\b\d+(\.\d+)?(e-?\d+)?\b", "N", error)
    return f"{case[key].get('stage', '')}: {error[:140]}"


def totals(cases: list[dict[str, Any]]) -> dict[str, Any]:
    exported = [c for c in cases if c.get("export", {}).get("ok")]
    service = [c for c in cases if "service" in c]
    return {
        "cases": len(cases),
        "exported": len(exported),
        "before": sum(passed(c, "before") for c in exported),
        "after": sum(passed(c, "after") for c in exported),
        "batch-1-only": sum(bool((c.get("after") or {}).get("batch-1-only")) for c in exported if passed(c, "after")),
        "service": len(service),
        "service-equal": sum(bool(c["service"].get("ok")) for c in service),
    }


def _cell(cases: list[dict[str, Any]], key: str) -> str:
    return " ".join(f"{c['weights'][0]}:" + ("pass" if passed(c, key) else "**fail**") for c in cases)


def _fmt(values: list[float], spec: str) -> str:
    return format(max(values), spec) if values else "-"


def row(arch: str, mode: str, cases: list[dict[str, Any]]) -> str:
    ok = [c for c in cases if passed(c, "after")]
    diff = [max(float(v) for v in c["after"]["diff"].values()) for c in ok]
    cosine = [c["after"]["cosine"] for c in ok]
    ours = [c["after"]["step_ms"] for c in ok if "step_ms" in c["after"]]
    theirs = [c["torch_step_ms"] for c in ok if "torch_step_ms" in c]
    notes = set()
    for c in cases:
        after = c.get("after") or {}
        if after.get("batch-1-only"):
            notes.add("batch-1-only")
        converter = (after.get("notes") or {}).get("converter")
        if converter and converter != "onnx2pytorch":
            notes.add(converter)
        if not c.get("export", {}).get("ok"):
            notes.add("export failed")
    service = [c["service"] for c in cases if "service" in c]
    svc = f"{sum(bool(s.get('ok')) for s in service)}/{len(service)}" if service else "-"
    min_cos = format(min(cosine), ".5f") if cosine else "-"
    step = f"{_fmt(ours, '.0f')} / {_fmt(theirs, '.0f')}"
    return (
        f"| {arch} | {mode} | {cases[0]['size']} | {_cell(cases, 'before')} | {_cell(cases, 'after')} | {_fmt(diff, '.1e')} | "
        f"{min_cos} | {step} | {svc} | {', '.join(sorted(notes))} |"
    )


def write_markdown(results: dict[str, Any], path: Path) -> None:
    cases = results["cases"]
    m = results["machine"]
    t = totals(cases)
    weights = sorted({c["weights"] for c in cases})
    lines = [
        "# Compatibility matrix: torchvision classifiers, exported the ways people export them",
        "",
        f"Measured {m['date']} on {m['machine']} ({m['cpus']} CPU threads), Python {m['python']}, torch {m['torch']}, "
        f"torchvision {m['torchvision']}, onnx {m['onnx']}, onnxruntime {m['onnxruntime']}. Produced by `make compat` "
        f"(`benchmarks/compat.py`, default resolution {results['size']} px, raised where an architecture needs more). "
        "*Before* is plain onnx2pytorch on the raw file, the state before issue 8; *after* is the service's pipeline "
        "(`app.engine.models.load_onnx`); both ran side by side in this one run. A case passes when the converted model runs at "
        "batch 1 and 4 with logits within 1e-3 (relative to their scale) of onnxruntime on the same file and its input gradient "
        "has a cosine of at least 0.999 with the source torch model's.",
        "",
        f"**Before: {t['before']}/{t['exported']} pass. After: {t['after']}/{t['exported']} pass** "
        f"({t['batch-1-only']} of them run one sample at a time, `batch-1-only`; {t['cases'] - t['exported']} case(s) did not export). "
        + (
            f"Through the live service: {t['service-equal']}/{t['service']} cases give a clean accuracy equal to onnxruntime's."
            if t["service"]
            else "The live-service stage (`--service`) was not part of this run."
        ),
        "",
        "Export modes: `tsNN-dyn` / `tsNN-b1` TorchScript (`dynamo=False`) at opset NN with a dynamic batch / a fixed batch 1; "
        "`dynamo-dyn` `dynamo=True` with a dynamic batch, one file; `dynamo-ext` `dynamo=True` with torch's defaults "
        "(fixed shapes, weights in `model.onnx.data`). Cells list, by initial, "
        + " / ".join(f"`{w}`" for w in weights)
        + " weights (`default`: torchvision's initialization; `randomized`: batch-norm statistics randomized, the issue's "
        "trained-like; `calibrated`: statistics measured on a sample and jittered). Max diff, min cosine "
        "and step time are over the passing cases; step = one attack step (forward + input-gradient backward) at batch 8, "
        "ms, ours / the source torch model.",
        "",
        "| arch | export | px | before | after | max diff | min cosine | step ms | service | notes |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for c in cases:
        groups[(c["arch"], c["mode"])].append(c)
    for (arch, mode), group in groups.items():
        lines.append(row(arch, mode, sorted(group, key=lambda c: c["weights"])))
    exported = [c for c in cases if c.get("export", {}).get("ok")]
    lines += ["", f"## Export failures ({t['cases'] - t['exported']}, not counted above)", ""]
    lines += [f"- {c['arch']} {c['weights']} {c['mode']}: `{reason(c, 'after')}`" for c in cases if c not in exported] or [
        "None."
    ]
    for key in ("before", "after"):
        failures = Counter(reason(c, key) for c in exported if not passed(c, key))
        lines += ["", f"## Failures {key} ({sum(failures.values())})", ""]
        lines += [f"- {n} x `{text}`" for text, n in failures.most_common()] or ["None."]
    path.write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    source = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "compat.json")
    write_markdown(json.loads(source.read_text()), source.with_name("COMPAT.md"))
