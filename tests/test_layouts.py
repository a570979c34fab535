"""Layouts and dtypes of real exported models and datasets: uint8 samples with input-bounds [0, 255],
channels-last (NHWC) models with per-channel preprocessing, scores shaped [N, K, 1, 1], and models
with several outputs (output-index). Each case is compared with its plain twin's curve."""

from __future__ import annotations

import io
import warnings
from pathlib import Path

import h5py
import numpy as np
import pytest
import torch
from torch import nn

from app import schemas
from app.engine.assets import export_onnx
from app.engine.evaluation import evaluate
from app.inspection import inspect_dataset, inspect_model
from conftest import submit, wait_status

EPS = [0.0, 0.02, 0.05, 0.1]
PRE3 = {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}


def request(**fields):
    body = {"trained-model": "m", "dataset": "d", "preprocessing": {}, "perturbation-values": EPS, **fields}
    body.setdefault("attack-params", {"steps": 10})
    return schemas.evaluation_request(body)


def write(path: Path, samples: np.ndarray, labels: np.ndarray) -> Path:
    """An HDF5 dataset keeping the samples' dtype (uint8 stays uint8)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as fh:
        fh.create_dataset("samples", data=samples, chunks=True)
        fh.create_dataset("labels", data=labels.astype(np.int64)).attrs["num_classes"] = 10
    return path


def export_outputs(model: nn.Module, sample_shape: tuple[int, ...], path: Path, names: list[str]) -> Path:
    """Export a module returning several tensors, each named, batch dynamic."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            model.eval(),
            torch.zeros(2, *sample_shape),
            str(path),
            input_names=["input"],
            output_names=names,
            dynamic_axes={"input": {0: "batch"}, **{n: {0: "batch"} for n in names}},
            dynamo=False,
        )
    return path


def predictions(model: nn.Module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        out = model(torch.from_numpy(x))
    return (out[-1] if isinstance(out, tuple) else out).flatten(1).argmax(1).numpy()


def assert_same_curve(a: dict, b: dict, n: int, tolerance: int = 1) -> None:
    ya, yb = a["sec-curve"]["y-values"], b["sec-curve"]["y-values"]
    assert a["sec-curve"]["x-values"] == b["sec-curve"]["x-values"]
    assert max(abs(p - q) for p, q in zip(ya, yb)) * n <= tolerance + 1e-9, (ya, yb)
    assert ya[-1] < ya[0], f"the attack broke nothing, so the comparison proves nothing: {ya}"


class DivideBy255(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x / 255.0)


class ChannelsLast(nn.Module):
    """What a Keras/tf2onnx export looks like from outside: N x H x W x C in, NCHW inside."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.permute(0, 3, 1, 2))


class TwoHeads(nn.Module):
    """Returns (features, logits): the logits are output 1."""

    def __init__(self, body: nn.Module, head: nn.Module) -> None:
        super().__init__()
        self.body, self.head = body, head

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = self.body(x)
        return features, self.head(features)


def rgb_cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 4 * 4, 10)).eval()


# -- dtypes ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def uint8_files(assets, tmp_path_factory):
    """The digits as uint8 0-255 with a model dividing by 255 in its graph, and their float 0-1 twins."""
    folder = assets.dir / "layouts"
    x8 = np.round(assets.x * 255).astype(np.uint8)
    plain = assets.net[:-1].eval()  # logits: the float twin without the softmax
    return {
        "u8-model": export_onnx(DivideBy255(plain), (1, 8, 8), folder / "div255.onnx"),
        "u8-data": write(folder / "digits-u8.h5", x8, assets.y),
        "f-model": export_onnx(plain, (1, 8, 8), folder / "plain.onnx"),
        "f-data": write(folder / "digits-f.h5", x8.astype(np.float32) / 255, assets.y),
    }


def test_uint8_samples_give_the_float_curve_at_the_same_fractional_epsilons(uint8_files):
    as_uint8 = evaluate(request(**{"input-bounds": [0, 255]}), uint8_files["u8-model"], uint8_files["u8-data"])
    as_float = evaluate(request(), uint8_files["f-model"], uint8_files["f-data"])
    assert as_uint8["attack"]["input-dtype"] == "uint8" and as_float["attack"]["input-dtype"] == "float32"
    assert as_uint8["attack"]["epsilons-absolute"] == pytest.approx([v * 255 for v in EPS])
    assert as_uint8["clean-accuracy"] > 0.8
    assert_same_curve(as_uint8, as_float, 120, tolerance=2)


def test_uint8_upload_is_accepted_and_checked_against_input_bounds(client, worker, uint8_files):
    data = {"file": (io.BytesIO(uint8_files["u8-data"].read_bytes()), "digits-u8.h5")}
    r = client.post("/api/datasets", data=data, content_type="multipart/form-data")
    assert r.status_code == 201, r.get_json()
    assert r.get_json()["value-range"] == [0, 255]
    body = {"trained-model": "files/layouts/div255.onnx", "dataset": r.get_json()["id"], "preprocessing": {}}
    refused = client.post("/api/security_evaluations", json=body)  # input-bounds default to [0, 1]
    assert refused.status_code == 400 and refused.get_json()["details"]["field"] == "input-bounds"
    job = submit(client, {**body, "input-bounds": [0, 255], "attack": "fgsm", "perturbation-values": [0, 0.05]})
    done = wait_status(client, job)
    assert done["job-status"] == "finished", done
    out = client.get(f"/api/security_evaluations/{job}/output").get_json()
    assert out["clean-accuracy"] > 0.8 and out["attack"]["epsilons-absolute"] == pytest.approx([0, 0.05 * 255])


@pytest.mark.parametrize("dtype", [np.int32, np.float64, np.uint16, np.float16])
def test_samples_dtypes(tmp_path, dtype):
    path = write(tmp_path / "d.h5", np.ones((4, 1, 8, 8), dtype), np.zeros(4))
    if dtype is np.int32:  # float32 cannot hold every int32 exactly
        with pytest.raises(Exception, match="integers of up to 16 bits"):
            inspect_dataset(path)
    else:
        assert inspect_dataset(path)["value-range"] == [1.0, 1.0]


# -- layouts -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def rgb_files(assets):
    """A 3-channel CNN and its channels-last export, with the same samples in both layouts."""
    folder, net = assets.dir / "layouts", rgb_cnn()
    x = np.random.default_rng(1).uniform(0, 1, (60, 3, 8, 8)).astype(np.float32)
    mean, std = torch.tensor(PRE3["mean"]).view(1, 3, 1, 1), torch.tensor(PRE3["std"]).view(1, 3, 1, 1)
    y = predictions(net, ((torch.from_numpy(x) - mean) / std).numpy())  # clean accuracy 1 with the right preprocessing
    return {
        "nchw-model": export_onnx(net, (3, 8, 8), folder / "rgb-nchw.onnx"),
        "nchw-data": write(folder / "rgb-nchw.h5", x, y),
        "nhwc-model": export_onnx(ChannelsLast(net), (8, 8, 3), folder / "rgb-nhwc.onnx"),
        "nhwc-data": write(folder / "rgb-nhwc.h5", np.ascontiguousarray(x.transpose(0, 2, 3, 1)), y),
    }


def test_nhwc_model_is_detected_and_normalized_on_its_channel_axis(rgb_files):
    assert inspect_model(rgb_files["nhwc-model"])["input-shape"] == ["batch", 8, 8, 3]
    nhwc = evaluate(request(preprocessing=PRE3), rgb_files["nhwc-model"], rgb_files["nhwc-data"])
    nchw = evaluate(request(preprocessing=PRE3), rgb_files["nchw-model"], rgb_files["nchw-data"])
    assert nhwc["model-notes"]["input-layout"] == "nhwc" and nchw["model-notes"]["input-layout"] == "nchw"
    assert nhwc["clean-accuracy"] == nchw["clean-accuracy"] == 1.0
    assert_same_curve(nhwc, nchw, 60)


def test_layout_at_submit_counts_channels_on_the_right_axis(client, rgb_files):
    body = {"trained-model": "files/layouts/rgb-nhwc.onnx", "dataset": "files/layouts/rgb-nhwc.h5", "preprocessing": PRE3}
    req = schemas.bind_to_files(
        schemas.evaluation_request(body), inspect_model(rgb_files["nhwc-model"]), inspect_dataset(rgb_files["nhwc-data"])
    )
    assert req["input-layout"] == "nhwc", "the stored request says which layout ran"
    forced = client.post("/api/security_evaluations", json={**body, "input-layout": "nchw"})
    assert forced.status_code == 400 and forced.get_json()["details"]["field"] == "preprocessing"
    assert "8 channels" in forced.get_json()["error"]
    bad = client.post("/api/security_evaluations", json={**body, "input-layout": "channels-last"})
    assert bad.status_code == 400 and bad.get_json()["details"]["field"] == "input-layout"


def test_dataset_record_gives_channels_under_each_layout_not_a_guess(client, rgb_files):
    """A channels-last file's record does not call its height the channel count: the layout is the model's
    to say, so the record gives the sample shape and the count under either layout."""
    data = {"file": (io.BytesIO(rgb_files["nhwc-data"].read_bytes()), "rgb-nhwc.h5")}
    r = client.post("/api/datasets", data=data, content_type="multipart/form-data")
    assert r.status_code == 201, r.get_json()
    record = client.get(f"/api/datasets/{r.get_json()['id']}").get_json()
    assert record["shape"] == [8, 8, 3] and record["channels-by-layout"] == {"nchw": 8, "nhwc": 3}
    assert "channels" not in record
    nchw = inspect_dataset(rgb_files["nchw-data"])
    assert nchw["shape"] == [3, 8, 8] and nchw["channels-by-layout"] == {"nchw": 3, "nhwc": 8}


# -- outputs -----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def output_files(assets):
    """Scores as [N, 10, 1, 1]; features and logits as two outputs; and their plain twin."""
    folder = assets.dir / "layouts"
    torch.manual_seed(2)
    body = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Conv2d(16, 10, 8))  # a full-size kernel: N x 10 x 1 x 1
    plain = nn.Sequential(body, nn.Flatten()).eval()
    two = TwoHeads(nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.Flatten()), nn.Linear(16 * 64, 10)).eval()
    return {
        "nk11-model": export_onnx(body.eval(), (1, 8, 8), folder / "nk11.onnx"),
        "flat-model": export_onnx(plain, (1, 8, 8), folder / "flat.onnx"),
        "nk11-data": write(folder / "nk11.h5", assets.x, predictions(plain, assets.x)),
        "two-model": export_outputs(two, (1, 8, 8), folder / "two.onnx", ["features", "logits"]),
        "single-model": export_onnx(nn.Sequential(two.body, two.head).eval(), (1, 8, 8), folder / "single.onnx"),
        "two-data": write(folder / "two.h5", assets.x, predictions(two, assets.x)),
    }


def test_scores_shaped_nk11_are_squeezed(output_files):
    assert inspect_model(output_files["nk11-model"])["output-shape"] == ["batch", 10, 1, 1]
    req = request(**{"perturbation-values": [0, 0.05, 0.1, 0.2]})
    squeezed = evaluate(req, output_files["nk11-model"], output_files["nk11-data"])
    flat = evaluate(req, output_files["flat-model"], output_files["nk11-data"])
    assert squeezed["clean-accuracy"] == 1.0
    assert_same_curve(squeezed, flat, 120, tolerance=0)


def test_output_index_picks_the_logits_of_a_two_output_model(output_files):
    assert len(inspect_model(output_files["two-model"])["output-shapes"]) == 2
    picked = evaluate(request(**{"output-index": 1}), output_files["two-model"], output_files["two-data"])
    single = evaluate(request(), output_files["single-model"], output_files["two-data"])
    assert picked["model-notes"]["output-index"] == 1 and picked["clean-accuracy"] == 1.0
    assert_same_curve(picked, single, 120, tolerance=0)


def test_output_index_is_checked_at_submit_and_runs_in_the_worker(client, worker, output_files):
    body = {"trained-model": "files/layouts/two.onnx", "dataset": "files/layouts/two.h5", "preprocessing": {}}
    for index, outputs in ((2, 2), (5, 2)):
        r = client.post("/api/security_evaluations", json={**body, "output-index": index})
        assert r.status_code == 400 and r.get_json()["details"]["field"] == "output-index", r.get_json()
        assert f"{outputs} output(s)" in r.get_json()["error"]
    single = client.post(
        "/api/security_evaluations", json={**body, "trained-model": "files/layouts/single.onnx", "output-index": 1}
    )
    assert single.status_code == 400 and single.get_json()["details"]["field"] == "output-index"
    job = submit(client, {**body, "output-index": 1, "attack": "fgsm", "perturbation-values": [0, 0.1]})
    done = wait_status(client, job)
    assert done["job-status"] == "finished", done
    assert done["request"]["output-index"] == 1 and done["request"]["input-layout"] == "nchw"
    assert client.get(f"/api/security_evaluations/{job}/output").get_json()["clean-accuracy"] == 1.0
