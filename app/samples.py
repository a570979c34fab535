"""Per-sample inspection files: their layout, names, writing, reading and merging (no torch).

Under a job's folder (``Storage.job_dir``)::

    inspection/index.json                      the samples, their predictions and attack traces
    inspection/<i>/clean.png                   sample i as stored
    inspection/<i>/adversarial-<k>.png         the point counted at epsilon index k (1..n-1)
    inspection/<i>/difference-<k>.png          its perturbation, magnified
    inspection/<i>/attribution-clean.png       attribution heat maps (captum's Integrated Gradients)
    inspection/<i>/attribution-adversarial-<k>.png

``i`` is the sample's position in the evaluated selection (the first ``inspect-samples``
positions are inspected), so the shards of a sharded evaluation each write the positions they
hold and the merge copies them side by side. The worker writes these files; the API only
reads them, by names checked against :data:`IMAGE_RE` and :data:`SAMPLE_RE`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .schemas import DEFAULT_INSPECT_SAMPLES, MAX_INSPECT_SAMPLES

INSPECTION = "inspection"
INDEX = "index.json"
DEFAULT_SAMPLES = DEFAULT_INSPECT_SAMPLES
MAX_SAMPLES = MAX_INSPECT_SAMPLES
MAX_INDEX_BYTES = 64 * 2**20  # the worker's own file; far above what 32 samples x 50 epsilons x 256-point traces take
SAMPLE_RE = re.compile(r"0|[1-9][0-9]?")
IMAGE_RE = re.compile(r"clean|attribution-clean|(?:adversarial|difference|attribution-adversarial)-(?:[1-9][0-9]?)")
PER_EPSILON = ("adversarial", "difference", "attribution-adversarial")


def image_names(n_epsilons: int) -> list[str]:
    """Every image of one sample, for an evaluation of ``n_epsilons`` epsilons (0 included)."""
    return ["clean", "attribution-clean", *(f"{kind}-{k}" for k in range(1, n_epsilons) for kind in PER_EPSILON)]


def write(
    work_dir: Path, index: dict[str, Any], images: dict[tuple[int, str], bytes], tag: str, owns: Callable[[], bool]
) -> bool:
    """Write ``inspection/`` whole: into a folder of this attempt's own, renamed into place only if
    ``owns()`` still says so right before (a stale attempt leaves the newer one's files alone).
    Returns whether it was written."""
    tag = re.sub(r"[^A-Za-z0-9-]", "", tag)[:64] or "local"
    tmp = work_dir / f"{INSPECTION}.{tag}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for (sample, name), data in images.items():
        folder = tmp / str(sample)
        folder.mkdir(exist_ok=True)
        (folder / f"{name}.png").write_bytes(data)
    (tmp / INDEX).write_text(json.dumps(index, allow_nan=False))
    if not owns():
        shutil.rmtree(tmp, ignore_errors=True)
        return False
    replace_folder(tmp, work_dir / INSPECTION)
    return True


def replace_folder(new: Path, dest: Path) -> None:
    """Put folder ``new`` at ``dest``, dropping what was there (a previous attempt's, or merge's)."""
    if dest.exists():
        old = dest.with_name(f"{new.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(dest, old)
        shutil.rmtree(old, ignore_errors=True)
    os.replace(new, dest)


def read_index(job_dir: Path) -> dict[str, Any] | None:
    """A job's ``index.json``, or None when it has none (an evaluation from before inspection existed)."""
    path = job_dir / INSPECTION / INDEX
    try:
        if path.is_symlink() or not path.is_file() or path.stat().st_size > MAX_INDEX_BYTES:
            return None
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def image_path(job_dir: Path, sample: str, name: str) -> Path | None:
    """The PNG ``name`` of ``sample``, or None: names that are not ours (no path ever comes from a
    request unchecked), files that do not exist, or anything but a regular file."""
    if not SAMPLE_RE.fullmatch(sample) or not IMAGE_RE.fullmatch(name):
        return None
    path = job_dir / INSPECTION / sample / f"{name}.png"
    return path if path.is_file() and not path.is_symlink() else None


def summary(index: dict[str, Any], error: str | None = None) -> dict[str, Any]:
    """The output's ``inspection`` block: how many samples, the limit, and which (and why none, when it failed)."""
    keys = ("sample", "position", "index", "label")
    out = {"count": len(index["samples"]), "limit": MAX_SAMPLES, "samples": [{k: s[k] for k in keys} for s in index["samples"]]}
    return {**out, "error": error} if error else out


def traces(index: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Every recorded attack trace (epsilon 0 has none, nor a sample misclassified before the attack)."""
    if not index:
        return []
    return [e["trace"] for s in index["samples"] for e in s["epsilons"] if e.get("trace") is not None]


def merge(parent_dir: Path, child_dirs: list[Path]) -> dict[str, Any] | None:
    """The shards' inspections side by side in the parent's folder (samples are numbered by their
    position in the whole selection, so they never collide); None when no shard has one."""
    parts = [(d, index) for d in child_dirs if (index := read_index(d)) is not None]
    if not parts:
        return None
    tmp = parent_dir / f"{INSPECTION}.merge.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    samples: list[dict[str, Any]] = []
    for child_dir, index in parts:
        for sample in index["samples"]:
            source = child_dir / INSPECTION / str(sample["sample"])
            if source.is_dir():
                shutil.copytree(source, tmp / str(sample["sample"]))
            samples.append(sample)
    merged = {**parts[0][1], "samples": sorted(samples, key=lambda s: s["sample"])}
    (tmp / INDEX).write_text(json.dumps(merged, allow_nan=False))
    replace_folder(tmp, parent_dir / INSPECTION)
    return merged
