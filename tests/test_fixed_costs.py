"""Fixed costs per job: a model is converted once per content (its sha256) in the worker and
reused by the jobs after it; a file changed under the same path is converted again; the cache
stays within its bounds and never serves a damaged entry; the worker's parent warms up without
initializing CUDA, and onnx2pytorch comes without torchvision yet still runs its operators.
Models are real ONNX files built here; the worker and Redis are real."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from app.engine.convcache import ConversionCache
from app.engine.models import load_onnx
from conftest import submit, wait_status

ROOT = Path(__file__).resolve().parent.parent


def linear(path: Path, seed: int, extra_nodes: int = 0) -> Path:
    """x [N,1,8,8] -> Flatten -> MatMul -> logits [N,10], weights drawn from ``seed``; ``extra_nodes``
    Identity nodes make a bigger graph of the same function (for the byte bound)."""
    w = np.random.default_rng(seed).normal(size=(64, 10)).astype(np.float32)
    nodes = [helper.make_node("Flatten", ["x"], ["f0"])]
    for k in range(extra_nodes):
        nodes.append(helper.make_node("Identity", [f"f{k}"], [f"f{k + 1}"]))
    nodes.append(helper.make_node("MatMul", [f"f{extra_nodes}", "W"], ["y"]))
    graph = helper.make_graph(
        nodes,
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(w, "W")],
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)], ir_version=10), str(path))
    return path


def logits(model: torch.nn.Module) -> torch.Tensor:
    x = torch.rand(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return model(x)


def keys(cache_dir: Path) -> list[str]:
    return sorted(p.stem for p in cache_dir.glob("*.json"))


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_jobs_on_one_model_reuse_its_conversion_and_a_changed_file_is_converted_again(client, worker, assets, appdata):
    cache_dir = appdata / "cache" / "conversion"
    path = linear(assets.dir / "fixed-costs" / "linear.onnx", seed=1)
    body = {
        "trained-model": "files/fixed-costs/linear.onnx",
        "dataset": "files/val.h5",
        "preprocessing": {},
        "perturbation-values": [0, 0.05],
        "attack-params": {"steps": 5},
    }

    def run() -> dict:
        job = wait_status(client, submit(client, body))
        assert job["job-status"] == "finished", job
        return client.get(f"/api/security_evaluations/{job['job_id']}/output").get_json()

    # The job's verification converted the model: the evaluation and the next job find it done.
    first, second = run(), run()
    assert first["timing"]["conversion-cache"] == "hit" and second["timing"]["conversion-cache"] == "hit"
    mine = [k for k in keys(cache_dir) if k.startswith(sha256(path))]
    assert len(mine) == 1, keys(cache_dir)
    assert second["sec-curve"] == first["sec-curve"]
    # Entry gone (evicted): the job converts it itself and stores it again.
    for f in cache_dir.glob(f"{mine[0]}.*"):
        f.unlink()
    third = run()
    assert third["timing"]["conversion-cache"] == "miss" and mine[0] in keys(cache_dir)
    assert third["sec-curve"] == first["sec-curve"]
    # New weights under the same path: converted again (never the old entry), and the curve is the new model's.
    linear(path, seed=2)
    changed = run()
    assert changed["model"]["sha256"] == sha256(path)
    assert len([k for k in keys(cache_dir) if k.startswith(sha256(path))]) == 1
    assert changed["sec-curve"]["y-values"][0] != first["sec-curve"]["y-values"][0]


def test_new_content_with_the_same_path_size_and_mtime_never_meets_the_stale_entry(tmp_path):
    cache = ConversionCache(tmp_path / "cache")
    path = linear(tmp_path / "m.onnx", seed=1)
    stat = path.stat()
    old, notes = load_onnx(path, cache=cache)
    assert notes["conversion-cache"] == "miss"
    again, notes = load_onnx(path, cache=cache)
    assert notes["conversion-cache"] == "hit" and torch.equal(logits(again), logits(old))
    linear(path, seed=2)
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns
    new, notes = load_onnx(path, cache=cache)
    assert notes["conversion-cache"] == "miss"
    assert torch.equal(logits(new), logits(load_onnx(path)[0]))  # what an uncached load of the new file gives
    assert not torch.allclose(logits(new), logits(old))


def test_the_cache_keeps_its_bounds_dropping_the_least_recently_used(tmp_path):
    models = [linear(tmp_path / f"m{k}.onnx", seed=k) for k in range(3)]
    cache = ConversionCache(tmp_path / "by-count", max_entries=2)
    load_onnx(models[0], cache=cache)
    time.sleep(0.02)
    load_onnx(models[1], cache=cache)
    time.sleep(0.02)
    assert load_onnx(models[0], cache=cache)[1]["conversion-cache"] == "hit"  # used again: now the newest
    time.sleep(0.02)
    load_onnx(models[2], cache=cache)
    held = keys(cache.dir)
    assert len(held) == 2 and {k[:64] for k in held} == {sha256(models[0]), sha256(models[2])}
    assert load_onnx(models[1], cache=cache)[1]["conversion-cache"] == "miss"

    big = [linear(tmp_path / f"big{k}.onnx", seed=k, extra_nodes=200) for k in range(2)]
    probe = ConversionCache(tmp_path / "probe")
    load_onnx(big[0], cache=probe)
    one_entry = sum(p.stat().st_size for p in probe.dir.glob("*.onnx"))
    by_bytes = ConversionCache(tmp_path / "by-bytes", max_entries=10, max_bytes=int(one_entry * 1.5))
    load_onnx(big[0], cache=by_bytes)
    time.sleep(0.02)
    load_onnx(big[1], cache=by_bytes)
    assert [k[:64] for k in keys(by_bytes.dir)] == [sha256(big[1])]
    assert sum(p.stat().st_size for p in by_bytes.dir.glob("*.onnx")) <= by_bytes.max_bytes
    # An entry bigger than the whole cache is not stored at all; the model still loads.
    tiny = ConversionCache(tmp_path / "tiny", max_bytes=100)
    model, notes = load_onnx(big[0], cache=tiny)
    assert notes["conversion-cache"] == "miss" and keys(tiny.dir) == [] and logits(model).shape == (4, 10)


def test_a_damaged_entry_is_never_used(tmp_path):
    cache = ConversionCache(tmp_path / "cache")
    path = linear(tmp_path / "m.onnx", seed=3)
    fresh, _ = load_onnx(path, cache=cache)
    (graph,) = cache.dir.glob("*.onnx")
    graph.write_bytes(graph.read_bytes()[:-40] + b"\x00" * 40)  # same size, other bytes
    model, notes = load_onnx(path, cache=cache)
    assert notes["conversion-cache"] == "miss" and torch.equal(logits(model), logits(fresh))
    assert load_onnx(path, cache=cache)[1]["conversion-cache"] == "hit"  # rewritten whole


def run_fresh(code: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout.strip().splitlines()[-1]


def test_the_worker_parent_warms_up_without_initializing_cuda_or_importing_torchvision():
    code = (
        "import sys, torch\n"
        "calls = []\n"
        "real = torch.cuda._lazy_init\n"
        "torch.cuda._lazy_init = lambda: (calls.append(1), real())[1]\n"
        "import app.worker\n"
        "app.worker.warm_up()\n"
        "print(torch.cuda.is_initialized(), bool(calls), 'torchvision' in sys.modules, 'onnx2pytorch' in sys.modules)\n"
    )
    assert run_fresh(code) == "False False False True"


def test_an_operator_that_needs_torchvision_still_converts_and_matches_onnxruntime(tmp_path):
    """RoiAlign runs through torchvision.ops: imported only when the converted model first runs."""
    rois = numpy_helper.from_array(np.array([[0, 0, 4, 4], [2, 2, 8, 8]], np.float32), "rois")
    index = numpy_helper.from_array(np.array([0, 0], np.int64), "idx")
    w = numpy_helper.from_array(np.random.default_rng(0).normal(size=(8, 10)).astype(np.float32), "W")
    nodes = [
        helper.make_node("RoiAlign", ["x", "rois", "idx"], ["r"], output_height=2, output_width=2, sampling_ratio=2),
        helper.make_node("Reshape", ["r", "shape"], ["f"]),
        helper.make_node("MatMul", ["f", "W"], ["y"]),
    ]
    shape = numpy_helper.from_array(np.array([1, 8], np.int64), "shape")
    graph = helper.make_graph(
        nodes,
        "roi",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 10])],
        [rois, index, w, shape],
    )
    path = tmp_path / "roi.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 16)], ir_version=10), str(path))
    code = (
        "import sys\n"
        "from pathlib import Path\n"
        "from app.engine.converter import convert_model_class\n"
        "convert_model_class()\n"
        "deferred = 'torchvision' not in sys.modules\n"
        "from app.engine.verification import verify\n"
        f"outcome = verify(Path({str(path)!r}))\n"
        "assert outcome['status'] == 'ready', outcome\n"
        "print(deferred, max(outcome['verification']['max-logit-diff'].values()) <= 1e-4, 'torchvision' in sys.modules)\n"
    )
    assert run_fresh(code) == "True True True"  # deferred, matches onnxruntime, and the real torchvision did the work


def test_a_model_with_external_data_is_never_cached_so_new_weights_beside_it_are_used(tmp_path):
    cache = ConversionCache(tmp_path / "cache")
    path = tmp_path / "ext" / "m.onnx"

    def save(seed: int) -> None:
        proto = onnx.load(str(linear(tmp_path / f"plain{seed}.onnx", seed=seed)))
        (path.parent / "m.data").unlink(missing_ok=True)  # onnx appends to an existing data file
        onnx.save(proto, str(path), save_as_external_data=True, location="m.data", size_threshold=0)

    path.parent.mkdir()
    save(1)
    old, notes = load_onnx(path, cache=cache)
    assert notes["conversion-cache"] == "off: external data" and keys(cache.dir) == []
    graph_bytes = path.read_bytes()
    save(2)
    assert path.read_bytes() == graph_bytes  # the very same graph file (its sha256 too); only the weights beside it changed
    new, notes = load_onnx(path, cache=cache)
    assert notes["conversion-cache"] == "off: external data"
    assert torch.equal(logits(new), logits(load_onnx(tmp_path / "plain2.onnx")[0]))
    assert not torch.allclose(logits(new), logits(old))
