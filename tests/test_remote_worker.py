"""Workers on other hosts: a real API (gunicorn) with its data directory, and a real worker with a
data directory of its own (nothing shared but Redis), which fetches its inputs over HTTP with a worker
token and sends its artifacts back. Also the internal routes' auth, hostile artifact archives, the
fetch cache's bound and locks, and a file changed on the API's disk after its upload."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import shutil
import tarfile
import threading
import uuid
from pathlib import Path

import pytest
import redis as redis_lib

from app.client import ApiError, Client
from app.fetchcache import FetchCache
from app.redis_server import free_port
from conftest import start_api, start_worker, stop_process

TOKEN = "worker-secret-" + uuid.uuid4().hex
# Cheap jobs (FGSM, a few samples): what is tested is where the files come from and go, not the attack.
REQUEST = {
    "preprocessing": {},
    "perturbation-values": [0, 0.1, 0.2],
    "attack": "fgsm",
    "attack-params": {},
    "indexes": list(range(12)),
    "batch-size": 16,
    "seed": 7,
    "inspect-samples": 2,
}
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")}


@pytest.fixture(scope="module")
def remote(redis_server, assets, tmp_path_factory):
    """The API on data directory A; one worker on data directory B with API_URL and WORKER_TOKEN."""
    api_data, worker_data = tmp_path_factory.mktemp("api-data"), tmp_path_factory.mktemp("worker-data")
    (api_data / "files").mkdir()
    shutil.copy(assets.dataset, api_data / "files" / "val.h5")  # a file named by path, on the API's disk only
    queue = f"remote-{uuid.uuid4().hex[:8]}"
    port = free_port()
    api = start_api(redis_server.url, api_data, port, WORKER_TOKEN=TOKEN, QUEUE_NAME=queue)
    url = f"http://127.0.0.1:{port}"
    worker = start_worker(
        redis_server.url, worker_data, name=f"remote-{queue}", QUEUE_NAME=queue, API_URL=url, WORKER_TOKEN=TOKEN
    )
    yield Client(url), api_data, worker_data, url
    stop_process(worker)
    stop_process(api)


def fetched(worker_data: Path) -> Path:
    return worker_data / "cache" / "fetched"


def test_remote_worker_fetches_inputs_and_sends_results_back(remote, assets):
    client, api_data, worker_data, url = remote
    model = client.upload("models", assets.model)  # verified by the remote worker on its fetched copy
    assert model["status"] == "ready" and model["verification"]
    dataset = client.upload("datasets", assets.dataset)
    job = client.submit({**REQUEST, "trained-model": model["id"], "dataset": dataset["id"]})
    out = client.wait(job["job_id"], timeout=300)
    job_id = job["job_id"]
    assert out["model"]["sha256"] == model["sha256"] and out["n-samples"] > 0
    # Everything the API serves from the job's folder came back from the worker's own disk.
    assert client.download(f"/api/security_evaluations/{job_id}/output/csv").startswith(b"epsilon")
    index = client.json("GET", f"/api/security_evaluations/{job_id}/samples")
    assert index["count"] == 2
    png = client.download(f"/api/security_evaluations/{job_id}/samples/0/adversarial-1.png")
    assert png.startswith(b"\x89PNG")
    report = client.download(f"/api/security_evaluations/{job_id}/report").decode()
    assert report.count("data:image/png;base64") > 2  # the plot and the inspected samples' images
    assert (api_data / "evaluations" / job_id / "samples.npz").is_file()
    assert not (worker_data / "evaluations" / job_id).exists()  # the worker dropped its copy once sent
    assert not (worker_data / "blobs").exists() or not list((worker_data / "blobs").rglob("*"))  # nothing shared
    cached = fetched(worker_data) / f"{model['sha256']}.onnx"
    assert hashlib.sha256(cached.read_bytes()).hexdigest() == model["sha256"]
    before = cached.stat()

    # A second job: the uploaded model comes from the cache (same file, never re-written); the
    # dataset is named by path, a file that only the API's disk holds.
    job2 = client.submit({**REQUEST, "trained-model": model["id"], "dataset": "files/val.h5"})
    out2 = client.wait(job2["job_id"], timeout=300)
    after = cached.stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)
    assert out2["dataset"]["sha256"] == dataset["sha256"]  # the same bytes, by path this time
    assert (fetched(worker_data) / f"{dataset['sha256']}.h5").is_file()


def test_sharded_evaluation_merges_on_a_remote_worker(remote, assets):
    client, api_data, worker_data, _ = remote
    model = client.upload("models", assets.model)
    dataset = client.upload("datasets", assets.dataset)
    sharded = {**REQUEST, "indexes": list(range(40)), "shards": 2, "shard-size": 20}
    job = client.submit({**sharded, "trained-model": model["id"], "dataset": dataset["id"]})
    out = client.wait(job["job_id"], timeout=300)
    assert out["shards"]["count"] == 2 and out["n-samples"] == 40
    # The merge read the shards' per-sample files and images from the API, and sent the merged ones there.
    assert client.json("GET", f"/api/security_evaluations/{job['job_id']}/samples")["count"] == 2
    assert (api_data / "evaluations" / job["job_id"] / "samples.npz").is_file()
    assert not list((worker_data / "evaluations").iterdir())


def test_model_with_external_data_is_fetched_whole_and_verified_remotely(remote, assets, tmp_path):
    from test_external_data import export_external, zipped

    client, _, worker_data, _ = remote
    graph, data = export_external(assets.model, tmp_path / "export")
    archive = tmp_path / "export.zip"
    archive.write_bytes(zipped({"model.onnx": graph.read_bytes(), data.name: data.read_bytes()}))
    model = client.upload("models", archive)  # verified by the remote worker on the fetched bundle
    assert model["status"] == "ready" and model["external-data"] == [data.name]
    bundle = fetched(worker_data) / f"{model['sha256']}.bundle"
    assert sorted(p.name for p in bundle.iterdir()) == sorted(["model.onnx", data.name])
    assert (bundle / data.name).read_bytes() == data.read_bytes()


def test_a_file_changed_on_the_api_after_upload_fails_the_job(remote, assets, tmp_path):
    client, api_data, worker_data, _ = remote
    model = client.upload("models", assets.model)
    fresh = tmp_path / "other.h5"
    from app.engine.assets import write_h5

    write_h5(fresh, assets.x[:40], assets.y[:40], n_classes=10)  # bytes no earlier test uploaded
    dataset = client.upload("datasets", fresh)
    blob = next((api_data / "blobs" / dataset["sha256"][:2]).glob(f"{dataset['sha256']}.*"))
    with open(blob, "ab") as fh:  # the stored file damaged after its upload
        fh.write(b"\0" * 64)
    job = client.submit({**REQUEST, "trained-model": model["id"], "dataset": dataset["id"]})
    with pytest.raises(ApiError) as failed:
        client.wait(job["job_id"], timeout=300)
    assert failed.value.body["job-status"] == "failed"
    assert "does not match its sha256" in failed.value.body["error"], failed.value.body
    assert not list(fetched(worker_data).glob(f"{dataset['sha256']}*.h5"))  # the wrong bytes were not kept


def test_internal_routes_need_the_worker_token(remote, settings):
    client, api_data, _, url = remote
    import httpx

    for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": TOKEN}):
        r = httpx.get(f"{url}/api/internal/blobs/{'a' * 64}", headers=headers)
        assert r.status_code == 401 and "worker token" in r.json()["error"]
    r = httpx.get(f"{url}/api/internal/blobs/{'a' * 64}", headers=AUTH)
    assert r.status_code == 404 and r.json()["error"]
    for bad in ("../../etc/passwd", "A" * 64, "a" * 63):
        assert httpx.get(f"{url}/api/internal/blobs/{bad}", headers=AUTH).status_code == 404
    r = httpx.get(f"{url}/api/internal/named-files", params={"path": "blobs/x"}, headers=AUTH)
    assert r.status_code == 400 and r.json()["error"]
    # An API without WORKER_TOKEN has no internal routes; API keys never open them.
    from app import create_app

    plain = create_app(settings).test_client()
    r = plain.get(f"/api/internal/blobs/{'a' * 64}", headers=AUTH)
    assert r.status_code == 404 and "WORKER_TOKEN" in r.get_json()["error"]
    keyed = create_app({**settings, "worker_token": TOKEN, "api_keys": {"k1": "alice"}}).test_client()
    assert keyed.get(f"/api/internal/blobs/{'a' * 64}", headers={"X-API-Key": "k1"}).status_code == 401
    assert keyed.get(f"/api/internal/blobs/{'a' * 64}", headers=AUTH).status_code == 404  # past auth: no such blob


# -- hostile artifact archives ----------------------------------------------------
def _tar(*members: tuple[tarfile.TarInfo, bytes | None], fmt=tarfile.USTAR_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def _file(name: str, data: bytes = b"x") -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, data


def _special(name: str, kind: bytes, link: str = "") -> tuple[tarfile.TarInfo, None]:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    return info, None


def test_hostile_artifact_archives_are_refused_and_write_nothing(redis_server, tmp_path):
    from app import create_app
    from app.records import Records

    data = tmp_path / "data"
    app = create_app({"redis_url": redis_server.url, "appdata": str(data), "worker_token": TOKEN, "max_upload_mb": 1})
    client = app.test_client()
    records = Records(redis_lib.Redis.from_url(redis_server.url))
    job_id = records.create_evaluation({"perturbation-values": [0]}, "public", {})
    claim = records.claim(job_id)
    url = f"/api/internal/evaluations/{job_id}/artifacts"
    headers = {**AUTH, "X-Attempt-Token": claim.token, "Content-Type": "application/x-tar"}
    good = _tar(_file("samples.npz", b"npz"), _file("inspection/index.json", b"{}"), _file("inspection/0/clean.png", b"png"))
    assert client.put(url, data=good, headers={**AUTH, "X-Attempt-Token": "1-other"}).status_code == 409  # a stale attempt
    r = client.put(url, data=good, headers=headers)
    assert r.status_code == 200 and r.get_json()["files"] == 3, r.get_json()
    job_dir = data / "evaluations" / job_id
    before = tree(tmp_path)
    hostile = {
        "traversal": _tar(_file("../escape.png")),
        "traversal inside": _tar(_file("inspection/0/../../../../escape.png")),
        "absolute": _tar(_file(str(tmp_path / "escape.png"))),
        "unknown name": _tar(_file("checkpoint.npz")),
        "symlink": _tar(_special("samples.npz", tarfile.SYMTYPE, "/etc/passwd")),
        "hard link": _tar(_special("inspection/index.json", tarfile.LNKTYPE, "samples.npz")),
        "device": _tar(_special("inspection/0/clean.png", tarfile.CHRTYPE)),
        "folder": _tar(_special("inspection/0", tarfile.DIRTYPE)),
        "pax header": _tar(_file("x" * 120 + "/inspection/index.json"), fmt=tarfile.PAX_FORMAT),
        "twice": _tar(_file("samples.npz"), _file("samples.npz")),
        "oversize": _tar(_file("samples.npz", os.urandom(2 * 2**20))),
        "not a tar": b"hello" * 300,
    }
    for what, body in hostile.items():
        r = client.put(url, data=body, headers=headers)
        assert 400 <= r.status_code < 500, (what, r.status_code)
        assert r.get_json()["error"], what
        assert r.status_code == (413 if what == "oversize" else 400), (what, r.get_json())
    assert tree(tmp_path) == before  # nothing written anywhere, not even a staging folder left
    assert (job_dir / "samples.npz").read_bytes() == b"npz"  # the accepted set is untouched
    assert not (job_dir / "samples.npz").is_symlink()


# -- the fetch cache ---------------------------------------------------------------
def _writer(data: bytes, calls: list):
    def fill(tmp: Path) -> None:
        calls.append(1)
        tmp.write_bytes(data)

    return fill


def test_fetch_cache_evicts_least_recently_used_but_never_a_file_in_use(tmp_path):
    cache = FetchCache(tmp_path / "cache", max_bytes=1000)
    calls: list = []
    with contextlib.ExitStack() as job:
        a, downloaded = cache.hold("a", _writer(b"a" * 400, calls), job)
        assert downloaded
        with contextlib.ExitStack() as other:
            cache.hold("b", _writer(b"b" * 400, calls), other)
        with contextlib.ExitStack() as other:
            cache.hold("c", _writer(b"c" * 400, calls), other)  # 1200 bytes: "a" is oldest, but in use
        assert a.read_bytes() == b"a" * 400
        assert not (tmp_path / "cache" / "b").exists()  # the least recently used that no job holds
    with contextlib.ExitStack() as job:
        cache.hold("d", _writer(b"d" * 400, calls), job)  # "a" is free now, and the oldest
    assert not a.exists() and (tmp_path / "cache" / "c").exists()
    with contextlib.ExitStack() as job:
        _, downloaded = cache.hold("c", _writer(b"", calls), job)
    assert not downloaded and calls == [1, 1, 1, 1]  # a hit fills nothing


def test_fetch_cache_downloads_an_entry_once_for_concurrent_jobs(tmp_path):
    cache = FetchCache(tmp_path / "cache", max_bytes=10**6)
    calls: list = []
    gate = threading.Event()

    def slow(tmp: Path) -> None:
        calls.append(1)
        gate.wait(5)
        tmp.write_bytes(b"z" * 100)

    results: list = []

    def job() -> None:
        with contextlib.ExitStack() as held:  # each its own lock files, as two work-horses have
            results.append(cache.hold("z", slow, held))

    threads = [threading.Thread(target=job) for _ in range(3)]
    for t in threads:
        t.start()
    gate.set()
    for t in threads:
        t.join(10)
    assert len(calls) == 1 and sorted(d for _, d in results) == [False, False, True]

    def cut(tmp: Path) -> None:
        tmp.write_bytes(b"half")
        raise RuntimeError("connection cut")

    with contextlib.ExitStack() as held, pytest.raises(RuntimeError):
        cache.hold("y", cut, held)  # a failed download leaves no entry and no temporary file
    assert not (tmp_path / "cache" / "y").exists() and not list((tmp_path / "cache").glob(".tmp-*"))
