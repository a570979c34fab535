"""A corpus of hostile files: each gets a clear 4xx at upload or submit, and nothing else is lost."""

from __future__ import annotations

import io

import h5py
import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from app.engine.assets import write_h5


def h5(path, samples=None, labels=None, **attrs):
    with h5py.File(path, "w") as f:
        if samples is not None:
            f.create_dataset("samples", data=samples)
        if labels is not None:
            ds = f.create_dataset("labels", data=labels)
            for k, v in attrs.items():
                ds.attrs[k] = v
    return path


def onnx_with_external_data(path, location):
    weight = numpy_helper.from_array(np.ones((64, 10), np.float32), "W")
    weight.data_location = TensorProto.EXTERNAL
    weight.ClearField("raw_data")
    weight.external_data.add(key="location", value=location)
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])
    out = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 10])
    nodes = [helper.make_node("Flatten", ["input"], ["f"]), helper.make_node("MatMul", ["f", "W"], ["output"])]
    graph = helper.make_graph(nodes, "g", [inp], [out], initializer=[weight])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def empty_graph(path):
    inp = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 1, 8, 8])
    graph = helper.make_graph([], "g", [inp], [inp])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


GOOD = np.random.default_rng(0).random((8, 1, 8, 8), dtype=np.float32)
LABELS = np.arange(8) % 10


def build_corpus(tmp, model_bytes):
    """(name, kind, path, expected phrase) for every bad file."""
    vlen = h5py.vlen_dtype(str)
    corpus = [
        ("truncated ONNX", "models", tmp / "truncated.onnx", "not a readable ONNX model"),
        ("garbage ONNX", "models", tmp / "garbage.onnx", "ONNX"),
        (
            "ONNX with external data outside",
            "models",
            onnx_with_external_data(tmp / "ext.onnx", "../../etc/passwd"),
            "external data",
        ),
        ("ONNX with an empty graph", "models", empty_graph(tmp / "empty.onnx"), "no nodes"),
        ("HDF5 object dtype", "datasets", None, "must hold floats"),
        ("HDF5 reference dtype labels", "datasets", None, "'labels' must be"),
        ("HDF5 wrong rank", "datasets", h5(tmp / "rank.h5", GOOD[:, 0], LABELS), "N x C x H x W"),
        (
            "HDF5 NaN samples",
            "datasets",
            h5(tmp / "nan.h5", np.where(GOOD > 0.9, np.nan, GOOD).astype(np.float32), LABELS),
            "NaN",
        ),
        (
            "HDF5 infinite samples",
            "datasets",
            h5(tmp / "inf.h5", np.where(GOOD > 0.9, np.inf, GOOD).astype(np.float32), LABELS),
            "infinite",
        ),
        ("HDF5 labels out of range", "datasets", h5(tmp / "range.h5", GOOD, LABELS + 5, num_classes=10), "out of range"),
        ("HDF5 negative labels", "datasets", h5(tmp / "neg.h5", GOOD, LABELS - 3), "negative"),
        ("HDF5 count mismatch", "datasets", h5(tmp / "count.h5", GOOD, LABELS[:5]), "8 samples but 5 labels"),
        ("HDF5 missing labels", "datasets", h5(tmp / "nolabels.h5", GOOD), "no 'labels'"),
        ("HDF5 labels not one-hot", "datasets", h5(tmp / "onehot.h5", GOOD, np.ones((8, 10), np.float32)), "one-hot"),
        ("HDF5 huge declared shape", "datasets", None, "exceeds the size limits"),
        ("HDF5 with a wrong suffix", "datasets", tmp / "data.pkl", "must end in"),
    ]
    (tmp / "truncated.onnx").write_bytes(model_bytes[: len(model_bytes) // 2])
    (tmp / "garbage.onnx").write_bytes(np.random.default_rng(1).bytes(4096))
    (tmp / "data.pkl").write_bytes(b"\x80\x04\x95 not a pickle we would ever load")
    with h5py.File(tmp / "object.h5", "w") as f:
        f.create_dataset("samples", data=np.array(["a"] * 8, dtype=object), dtype=vlen)
        f.create_dataset("labels", data=LABELS)
    with h5py.File(tmp / "ref.h5", "w") as f:
        f.create_dataset("samples", data=GOOD)
        refs = f.create_dataset("labels", (8,), dtype=h5py.ref_dtype)
        for i in range(8):
            refs[i] = f["samples"].ref
    with h5py.File(tmp / "huge.h5", "w") as f:
        f.create_dataset("samples", shape=(10**9, 3, 1024, 1024), dtype=np.float32, chunks=(1, 3, 64, 64))
        f.create_dataset("labels", shape=(10**9,), dtype=np.int64, chunks=(1024,))
    fixes = {
        "HDF5 object dtype": tmp / "object.h5",
        "HDF5 reference dtype labels": tmp / "ref.h5",
        "HDF5 huge declared shape": tmp / "huge.h5",
    }
    return [(n, k, fixes.get(n, p), e) for n, k, p, e in corpus]


def test_every_bad_file_is_refused_clearly_and_nothing_else_is_lost(client, assets, tmp_path, appdata):
    good = client.post(
        "/api/models", content_type="multipart/form-data", data={"file": (io.BytesIO(assets.model.read_bytes()), "good.onnx")}
    )
    assert good.status_code == 202  # stored, to be verified by a worker
    corpus = build_corpus(tmp_path, assets.model.read_bytes())
    assert len(corpus) >= 12
    for name, kind, path, expected in corpus:
        r = client.post(
            f"/api/{kind}", content_type="multipart/form-data", data={"file": (io.BytesIO(path.read_bytes()), path.name)}
        )
        body = r.get_json()
        assert 400 <= r.status_code < 500, (name, r.status_code, body)
        assert expected in body["error"], (name, body)
    assert [m["id"] for m in client.get("/api/models").get_json()["models"]] == [good.get_json()["id"]]
    assert client.get("/api/datasets").get_json()["datasets"] == []
    assert list((appdata / "uploads").iterdir()) == [], "refused uploads must not leave files behind"


def test_external_data_leaving_the_model_folder_is_refused_for_named_files(client, appdata):
    onnx_with_external_data(appdata / "files" / "escape.onnx", "../../outside.bin")
    body = {"trained-model": "files/escape.onnx", "dataset": "files/val.h5", "preprocessing": {}}
    r = client.post("/api/security_evaluations", json=body)
    assert r.status_code == 400 and "points outside" in r.get_json()["error"]


def test_model_whose_outputs_do_not_match_the_classes_is_refused_at_submit(client, appdata, assets):
    import torch

    from app.engine.assets import export_onnx

    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 5))
    export_onnx(net, (1, 8, 8), appdata / "files" / "five.onnx")
    r = client.post(
        "/api/security_evaluations", json={"trained-model": "files/five.onnx", "dataset": "files/val.h5", "preprocessing": {}}
    )
    assert r.status_code == 400 and "10 classes but the model outputs 5 scores" in r.get_json()["error"]


@pytest.mark.parametrize("name", ["x.h5", "../../x.h5", "a/b/../../x.h5"])
def test_uploaded_file_names_are_never_trusted(client, tmp_path, appdata, name):
    path = write_h5(tmp_path / "ok.h5", GOOD, LABELS, n_classes=10)
    r = client.post("/api/datasets", content_type="multipart/form-data", data={"file": (io.BytesIO(path.read_bytes()), name)})
    assert r.status_code == 201
    meta = r.get_json()
    assert "/" not in meta["name"] and ".." not in meta["name"]
    assert not (appdata.parent / "x.h5").exists()
