"""Models with external data (torch's default export: ``model.onnx`` + ``model.onnx.data``):
uploaded with their data file(s) in the field ``external-data`` or as one ``.zip``, stored
together, evaluated by a real worker exactly like the same model saved as one file; and
every hostile variant (locations, spans, zips) refused with a JSON 4xx naming the problem."""

from __future__ import annotations

import io
import stat
import zipfile
from pathlib import Path

import onnx
import pytest

from conftest import submit, verified, wait_status

DATA = "model.onnx.data"


def export_external(source: Path, folder: Path, location: str = DATA) -> tuple[Path, Path]:
    """The model re-saved as torch's dynamo exporter writes it: every tensor in one data file.

    (``torch.onnx.export(dynamo=True)`` needs onnxscript, not installed here; this is its file format.)
    """
    folder.mkdir(parents=True, exist_ok=True)
    model = onnx.load(str(source))
    onnx.save(
        model,
        str(folder / "model.onnx"),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=location,
        size_threshold=0,
    )
    return folder / "model.onnx", folder / location


def post_fields(client, graph: bytes, data: dict[str, bytes]):
    fields = {"file": (io.BytesIO(graph), "model.onnx")}
    if data:
        fields["external-data"] = [(io.BytesIO(body), name) for name, body in data.items()]
    return client.post("/api/models", data=fields, content_type="multipart/form-data")


def zipped(entries: dict[str, bytes], compression: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression) as archive:
        for name, body in entries.items():
            archive.writestr(name, body)
    return buffer.getvalue()


def post_zip(client, body: bytes, name: str = "export.zip"):
    return client.post("/api/models", data={"file": (io.BytesIO(body), name)}, content_type="multipart/form-data")


def with_location(graph: Path, location: str | None = None, length: int | None = None) -> bytes:
    """The graph with the first initializer's location or length rewritten (the data untouched)."""
    model = onnx.load(str(graph), load_external_data=False)
    for entry in model.graph.initializer[0].external_data:
        if entry.key == "location" and location is not None:
            entry.value = location
        if entry.key == "length" and length is not None:
            entry.value = str(length)
    return model.SerializeToString()


@pytest.fixture
def external(assets, tmp_path):
    return export_external(assets.model, tmp_path / "export")


def leftovers(appdata: Path) -> list[str]:
    """What a bundle upload left in ``uploads/``: its staged folder or its zip (other tests' files aside)."""
    return sorted(p.name for p in (appdata / "uploads").iterdir() if p.name.startswith("bundle-") or p.suffix == ".zip")


def test_external_data_model_evaluates_like_the_single_file_model(client, worker, assets, appdata, external):
    graph, data = external
    single = verified(client, post_fields(client, assets.model.read_bytes(), {}).get_json()["id"])
    r = post_fields(client, graph.read_bytes(), {DATA: data.read_bytes()})
    assert r.status_code == 202, r.get_json()
    pair = verified(client, r.get_json()["id"])
    r = post_zip(client, zipped({"export/model.onnx": graph.read_bytes(), f"export/{DATA}": data.read_bytes()}))
    assert r.status_code == 202, r.get_json()
    packed = verified(client, r.get_json()["id"])
    # Verified with its weights read from the data file: the same logits as the single file.
    assert pair["verification"]["max-logit-diff"] == single["verification"]["max-logit-diff"]
    # One content address for the same graph and data, however they came; both files stored in its folder.
    assert pair["sha256"] == packed["sha256"] and pair["external-data"] == [DATA]
    assert pair["size"] == graph.stat().st_size + data.stat().st_size
    folder = appdata / "blobs" / pair["sha256"][:2] / pair["sha256"]
    assert sorted(p.name for p in folder.iterdir()) == ["model.onnx", DATA]
    assert pair["input-shape"] == single["input-shape"] and pair["operators"] == single["operators"]
    dataset = client.post(
        "/api/datasets", data={"file": (io.BytesIO(assets.dataset.read_bytes()), "val.h5")}, content_type="multipart/form-data"
    ).get_json()
    curves = []
    for model in (single, pair, packed):
        body = {
            "trained-model": model["id"],
            "dataset": dataset["id"],
            "preprocessing": {},
            "perturbation-values": [0, 0.05, 0.1],
            "attack-params": {"steps": 10, "random-start": False},
        }
        status = wait_status(client, submit(client, body))
        assert status["job-status"] == "finished", status
        curves.append(client.get(f"/api/security_evaluations/{status['job_id']}/output").get_json()["sec-curve"])
    assert curves[0]["y-values"][0] > 0.5  # the trained CNN, not a constant
    assert curves[1] == curves[0] and curves[2] == curves[0]
    assert leftovers(appdata) == []


def test_model_with_external_data_and_no_data_file_names_the_field(client, external):
    graph, _ = external
    r = post_fields(client, graph.read_bytes(), {})
    assert r.status_code == 422 and "external-data" in r.get_json()["error"]


@pytest.mark.parametrize(
    "location,length,data_name,status,text",
    [
        ("other.bin", None, DATA, 422, "'other.bin' names a file that was not uploaded"),
        ("../x", None, DATA, 422, "'../x' points outside"),
        ("/etc/passwd", None, DATA, 422, "'/etc/passwd' points outside"),
        (None, 10**6, DATA, 422, "beyond the end"),
        (None, 4, DATA, 422, "holds 4 bytes"),
        (None, None, "../model.onnx.data", 400, "not allowed"),
        (None, None, "model.onnx", 400, "not allowed"),
    ],
)
def test_hostile_locations_and_spans_are_refused(client, appdata, external, location, length, data_name, status, text):
    graph, data = external
    r = post_fields(client, with_location(graph, location, length), {data_name: data.read_bytes()})
    body = r.get_json()
    assert r.status_code == status and text in body["error"], body
    assert leftovers(appdata) == []


def test_data_file_the_graph_never_names_is_refused(client, external):
    graph, data = external
    r = post_fields(client, graph.read_bytes(), {DATA: data.read_bytes(), "extra.bin": b"\0" * 16})
    assert r.status_code == 422 and "extra.bin" in r.get_json()["error"]


def test_data_file_alone_or_on_a_dataset_is_refused(client, assets, external):
    _, data = external
    r = client.post(
        "/api/models", data={"external-data": (io.BytesIO(data.read_bytes()), DATA)}, content_type="multipart/form-data"
    )
    assert r.status_code == 400 and "without its graph" in r.get_json()["error"]
    r = client.post(
        "/api/datasets",
        data={"file": (io.BytesIO(assets.dataset.read_bytes()), "val.h5"), "external-data": (io.BytesIO(b"x"), "w.bin")},
        content_type="multipart/form-data",
    )
    assert r.status_code == 400 and "only for models" in r.get_json()["error"]


def test_model_and_data_count_together_against_the_size_limit(settings, assets, tmp_path):
    from app import create_app

    # Each file fits the 1 MB limit on its own; together they do not.
    graph, data = export_external(assets.model, tmp_path / "big")
    small = create_app({**settings, "max_upload_mb": 1}).test_client()
    assert graph.stat().st_size + data.stat().st_size < 2**20 - (700 << 10)
    r = post_fields(
        small, graph.read_bytes(), {DATA: data.read_bytes(), "pad.bin": b"\1" * (700 << 10), "pad2.bin": b"\1" * (700 << 10)}
    )
    assert r.status_code == 413 and "together" in r.get_json()["error"]


def _symlink_zip(graph: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("model.onnx", graph)
        link = zipfile.ZipInfo(DATA)
        link.external_attr = (stat.S_IFLNK | 0o777) << 16
        archive.writestr(link, "/etc/passwd")
    return buffer.getvalue()


def _bomb() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive, archive.open(DATA, "w") as out:
        for _ in range(16):
            out.write(b"\0" * (1 << 20))  # 16 MiB of zeros: about 16 KiB compressed
    return buffer.getvalue()


@pytest.mark.parametrize(
    "make,text",
    [
        (lambda g, d: zipped({"model.onnx": g, f"../{DATA}": d}), "'..'"),
        (lambda g, d: zipped({"/abs/model.onnx": g, DATA: d}), "absolute path"),
        (lambda g, d: zipped({"model.onnx": g, "copy.onnx": g, DATA: d}), "exactly one .onnx"),
        (lambda g, d: zipped({DATA: d}), "exactly one .onnx"),
        (lambda g, d: zipped({"model.onnx": g, f"sub/{DATA}": d}), "not beside the graph"),
        (lambda g, d: zipped({f"f{i}.bin": b"" for i in range(9)}), "at most 8"),
        (lambda g, d: _symlink_zip(g), "symbolic link"),
        (lambda g, d: _bomb(), "zip bomb"),
        (lambda g, d: b"PK\3\4 not really a zip", "not a readable zip"),
    ],
    ids=["dotdot", "absolute", "two-onnx", "no-onnx", "subfolder", "many-entries", "symlink", "bomb", "garbage"],
)
def test_hostile_zips_are_refused(client, appdata, external, make, text):
    graph, data = external
    r = post_zip(client, make(graph.read_bytes(), data.read_bytes()))
    body = r.get_json()
    assert r.status_code == 422 and text in body["error"], body
    assert leftovers(appdata) == []
