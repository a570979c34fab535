"""Large inputs: the dataset is read one batch at a time and the per-sample perturbations live on
disk, so an evaluation's memory depends on its batch, not its sample count; an out-of-memory error
halves the batch and the curve is the one a run at the smaller batch gives."""

from __future__ import annotations

import tracemalloc

import h5py
import numpy as np
import pytest
import torch
from test_worker_bounds import RunsOutOfMemory  # one out-of-memory fault for both tests
from torch import nn

import app.engine.evaluation as evaluation
from app import schemas
from app.engine.checkpoint import CHECKPOINT
from app.engine.data import H5Dataset
from app.engine.rows import RowFile

SIDE, N_SAMPLES, BATCH = 32, 4000, 32


def tiny_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 4, stride=4), nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(32, 10)
    ).eval()


@pytest.fixture(scope="module")
def big(tmp_path_factory):
    """A uint8 dataset of 4000 x 3 x 32 x 32 in chunks (47 MiB as float32, the engine's dtype), labelled
    with the model's own predictions so every sample is attacked, and the model as ONNX."""
    folder = tmp_path_factory.mktemp("large")
    net = tiny_net()
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(N_SAMPLES, 3, SIDE, SIDE), dtype=np.uint8)
    with torch.no_grad():
        y = net(torch.from_numpy(x).float()).argmax(1).numpy()
    with h5py.File(folder / "big.h5", "w") as fh:
        fh.create_dataset("samples", data=x, chunks=(16, 3, SIDE, SIDE))
        fh.create_dataset("labels", data=y).attrs["num_classes"] = 10
    model = folder / "net.onnx"
    torch.onnx.export(
        net, torch.zeros(1, 3, SIDE, SIDE), model, dynamo=False, opset_version=17,
        input_names=["x"], output_names=["logits"], dynamic_axes={"x": {0: "n"}, "logits": {0: "n"}},
    )
    return folder, model, folder / "big.h5"


def request(**fields):
    body = {"trained-model": "m", "dataset": "d", "preprocessing": {}, "input-bounds": [0, 255], "input-layout": "nchw"}
    return schemas.evaluation_request({**body, **fields})


class CountingDataset(H5Dataset):
    """The real reader, counting the rows each read asks HDF5 for."""

    reads: list[int] = []

    def read(self, indexes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        CountingDataset.reads.append(len(indexes))
        return super().read(indexes)


def test_a_dataset_larger_than_the_batch_is_read_in_batches_and_never_held_whole(big, tmp_path, monkeypatch):
    _, model, dataset = big
    monkeypatch.setattr(evaluation, "H5Dataset", CountingDataset)
    # A first small run imports what the conversion imports lazily (tens of MB of code objects).
    evaluation.evaluate(request(attack="fgsm", indexes=list(range(10))), model, dataset)
    CountingDataset.reads = []
    whole = N_SAMPLES * 3 * SIDE * SIDE * 4
    tracemalloc.start()  # numpy reports its buffers to tracemalloc: any whole-dataset array would show
    try:
        out = evaluation.evaluate(
            request(attack="fgsm", **{"perturbation-values": [0, 0.01, 0.05]}, **{"batch-size": BATCH}),
            model,
            dataset,
            work_dir=tmp_path / "work",
        )
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    print(f"peak {peak / 2**20:.1f} MiB traced for a dataset of {whole / 2**20:.0f} MiB as float32")
    assert out["n-samples"] == N_SAMPLES and out["clean-accuracy"] > 0.9
    ys = out["sec-curve"]["y-values"]
    assert ys[2] < ys[0], "the attack broke nothing: the perturbations were never written"
    assert max(CountingDataset.reads) <= BATCH
    assert peak < whole / 10, f"{peak} bytes of numpy buffers at once for a {whole}-byte dataset"


def test_the_evaluation_without_a_work_dir_keeps_its_perturbations_on_disk_too(big, tmp_path, monkeypatch):
    _, model, dataset = big
    made = []
    real_create = RowFile.create

    def record(path, n, shape):
        made.append((path, n, shape))
        return real_create(path, n, shape)

    monkeypatch.setattr(RowFile, "create", staticmethod(record))
    req = request(attack="fgsm", indexes=list(range(200)), **{"perturbation-values": [0, 0.05]})
    out = evaluation.evaluate(req, model, dataset)
    assert out["n-samples"] == 200
    assert [(n, shape) for _, n, shape in made] == [(200, (3, SIDE, SIDE))]
    assert not made[0][0].exists(), "the temporary perturbation file outlived the evaluation"


def test_minimal_norm_anchors_live_in_a_row_file_and_survive_a_resume(big, tmp_path):
    _, model, dataset = big
    eps = [0, 0.01, 0.05]
    req = request(attack="fmn", indexes=list(range(40)), **{"attack-params": {"steps": 10}, "perturbation-values": eps})
    full = evaluation.evaluate(req, model, dataset)
    work = tmp_path / "work"
    seen = []
    with pytest.raises(evaluation.StopRequested):
        evaluation.evaluate(req, model, dataset, work_dir=work, progress=lambda d, t: seen.append(d),
                            should_stop=lambda: bool(seen) and seen[-1] > 3 * 40)  # after the first epsilon's save
    with np.load(work / CHECKPOINT) as ck:
        assert "anchor" not in ck.files and str(ck["anchor_file"]).startswith("anchor.")
        assert RowFile.open(work / str(ck["anchor_file"])).shape == (40, 3, SIDE, SIDE)
    resumed = evaluation.evaluate(req, model, dataset, work_dir=work)
    assert resumed["resumed"] is True and resumed["sec-curve"] == full["sec-curve"]
    assert not list(work.glob("anchor*")) and not list(work.glob("delta*"))


def test_row_file_reads_back_what_was_written_in_any_order(tmp_path):
    rows = RowFile.create(tmp_path / "delta.t.npy", 10, (2, 3))
    data = np.arange(60, dtype=np.float32).reshape(10, 2, 3)
    rows[np.array([0, 1, 2, 7, 9])] = data[[0, 1, 2, 7, 9]]
    rows[np.array([], dtype=np.int64)] = data[:0]  # a batch where nothing was broken
    assert rows[np.array([], dtype=np.int64)].shape == (0, 2, 3)
    got = rows[np.arange(10)]
    assert np.array_equal(got[[0, 1, 2, 7, 9]], data[[0, 1, 2, 7, 9]]) and not got[[3, 4, 5, 6, 8]].any()
    rows.flush()
    assert np.array_equal(np.load(tmp_path / "delta.t.npy"), got)  # a plain .npy file
    with pytest.raises(IndexError):
        rows[np.array([10])]


def test_cuda_out_of_memory_halves_the_batch_and_gives_the_curve_of_the_smaller_batch(big, monkeypatch):
    _, model, dataset = big
    body = {"attack": "pgd", "indexes": list(range(120)), "perturbation-values": [0, 0.005, 0.02],
            "attack-params": {"steps": 3, "random-start": True}}
    at_8 = evaluation.evaluate(request(**body, **{"batch-size": 8}), model, dataset)
    real_load = evaluation.load_onnx

    def load_on_a_small_gpu(*args, **kwargs):
        net, notes = real_load(*args, **kwargs)
        return RunsOutOfMemory(net, 64), notes

    monkeypatch.setattr(evaluation, "load_onnx", load_on_a_small_gpu)
    halved = evaluation.evaluate(request(**body, **{"batch-size": 64}), model, dataset)
    # PGD verifies a pool of 8 batches at once: 8 x 64 fails, then 8 x 32 and 8 x 16, and 8 x 8 fits.
    assert halved["attack"]["batch-size"] == 8 and halved["attack"]["batch-size-requested"] == 64
    assert halved["sec-curve"] == at_8["sec-curve"]
    assert at_8["sec-curve"]["y-values"][2] < at_8["sec-curve"]["y-values"][0]
