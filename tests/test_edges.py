"""The API at its edges, under real gunicorn started with app/gunicorn_conf.py: slow clients,
a large slow upload, stalled and aborted requests, and errors that stay JSON even where
gunicorn answers by itself. Requests are written byte by byte on raw sockets."""

from __future__ import annotations

import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import h5py
import numpy as np
import psutil
import pytest

from app.redis_server import free_port
from conftest import ROOT, start_api, stop_process

UPLOAD_MB = 300
WORKER_TIMEOUT = 4
IDLE_TIMEOUT = 3
JSON_LIMIT = 256 * 1024
CLOSE = b"Host: t\r\nConnection: close\r\n"
SUBMIT = b"POST /api/security_evaluations HTTP/1.1\r\n" + CLOSE + b"Content-Type: application/json\r\n"
BOUNDARY = b"edgesboundary"


@pytest.fixture(scope="module")
def api(redis_server, appdata):
    """One worker process (the hardest case for slow clients) with short timeouts, so that the
    slow upload outlasts the worker timeout and a stalled client is dropped quickly."""
    port = free_port()
    env = {"WEB_CONCURRENCY": "1", "WORKER_TIMEOUT": str(WORKER_TIMEOUT), "IDLE_TIMEOUT": str(IDLE_TIMEOUT)}
    proc = start_api(redis_server.url, appdata, port, MAX_UPLOAD_MB=str(UPLOAD_MB), **env)
    yield SimpleNamespace(port=port, proc=proc, uploads=appdata / "uploads")
    stop_process(proc)


def worker_pid(api) -> int:
    children = psutil.Process(api.proc.pid).children()
    assert len(children) == 1, children
    return children[0].pid


def connect(api, timeout: float = 30) -> socket.socket:
    return socket.create_connection(("127.0.0.1", api.port), timeout=timeout)


def read_response(sock: socket.socket) -> tuple[int, dict]:
    """Status and JSON body of one response, read as soon as it is complete (the client may still be sending)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        assert chunk, f"connection closed without a response: {buf[:200]!r}"
        buf += chunk
    head, _, body = buf.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    assert headers.get("content-type") == "application/json", head
    length = int(headers["content-length"])
    while len(body) < length:
        chunk = sock.recv(65536)
        assert chunk, "connection closed inside the body"
        body += chunk
    return int(lines[0].split()[1]), json.loads(body[:length])


def exchange(api, data: bytes) -> tuple[int, dict]:
    with connect(api) as sock:
        sock.sendall(data)
        return read_response(sock)


def multipart_head(name: str, total: int) -> tuple[bytes, bytes]:
    """Request head and the part's preamble for a ``file`` upload whose file is ``total`` bytes."""
    preamble = b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="file"; filename="' + name.encode() + b'"\r\n\r\n'
    epilogue = b"\r\n--" + BOUNDARY + b"--\r\n"
    head = (
        b"POST /api/datasets HTTP/1.1\r\n" + CLOSE + b"Content-Type: multipart/form-data; boundary=" + BOUNDARY + b"\r\n"
        b"Content-Length: " + str(len(preamble) + total + len(epilogue)).encode() + b"\r\n\r\n"
    )
    return head + preamble, epilogue


def chunked(body: bytes, size: int = 65536) -> bytes:
    parts = [b"%x\r\n%s\r\n" % (len(body[i : i + size]), body[i : i + size]) for i in range(0, len(body), size)]
    return b"".join(parts) + b"0\r\n\r\n"


EDGES = [
    ("unknown route", b"GET /api/nothing-here HTTP/1.1\r\n" + CLOSE + b"\r\n", 404),
    ("wrong method", b"PUT /api/health HTTP/1.1\r\n" + CLOSE + b"\r\n", 405),
    ("request line too long", b"GET /api/" + b"a" * 5000 + b" HTTP/1.1\r\n" + CLOSE + b"\r\n", 414),
    (
        "too many headers",
        b"GET /api/health HTTP/1.1\r\n" + CLOSE + b"".join(b"X-%d: 1\r\n" % i for i in range(150)) + b"\r\n",
        431,
    ),
    ("header too large", b"GET /api/health HTTP/1.1\r\n" + CLOSE + b"X-Big: " + b"a" * 9000 + b"\r\n\r\n", 431),
    ("malformed request line", b"NOT HTTP AT ALL\r\n\r\n", 400),
    ("invalid header name", b"GET /api/health HTTP/1.1\r\n" + CLOSE + b"Bad Header: 1\r\n\r\n", 400),
    ("two Content-Lengths", SUBMIT + b"Content-Length: 2\r\nContent-Length: 3\r\n\r\n{}", 400),
    ("malformed chunked body", SUBMIT + b"Transfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n", 400),
    ("JSON body over the limit", SUBMIT + b"Content-Length: %d\r\n\r\n" % (JSON_LIMIT + 1) + b" " * (JSON_LIMIT + 1), 413),
    ("chunked JSON body over the limit", SUBMIT + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(b" " * (JSON_LIMIT + 10)), 413),
    ("chunked JSON body under the limit", SUBMIT + b"Transfer-Encoding: chunked\r\n\r\n" + chunked(b"[1, 2]"), 400),
]


@pytest.mark.parametrize("name,data,status", EDGES, ids=[e[0] for e in EDGES])
def test_every_edge_error_is_json(api, name, data, status):
    code, body = exchange(api, data)
    assert code == status, body
    assert isinstance(body.get("error"), str) and body["error"], body


@pytest.mark.parametrize(
    "name,head,declared",
    [
        ("JSON body", SUBMIT, 100 * 2**20),
        ("upload", b"POST /api/datasets HTTP/1.1\r\n" + CLOSE + b"Content-Type: multipart/form-data; boundary=x\r\n", 2**31),
    ],
)
def test_too_large_is_413_while_the_client_is_still_sending(api, name, head, declared):
    """Content-Length declares more than the limit: the 413 comes before the body does."""
    with connect(api) as sock:
        sock.sendall(head + b"Content-Length: %d\r\n\r\n" % declared)
        sock.sendall(b"-" * 2**20)  # a first MiB of a body the server must not wait for
        status, body = read_response(sock)
    assert status == 413 and "too large" in body["error"], body


def trickle(sock: socket.socket, data: bytes, stop: threading.Event, pause: float) -> None:
    """Send ``data`` one byte per ``pause`` seconds until told to stop."""
    for i in range(len(data)):
        if stop.wait(pause):
            return
        sock.sendall(data[i : i + 1])


def test_two_slow_clients_do_not_block_health(api):
    """A slowloris on the request line and a slow upload body hold two threads of the single
    worker process, and a third connection sends nothing at all; health still answers."""
    stop = threading.Event()
    slow_headers = connect(api)
    slow_body = connect(api)
    silent = connect(api)
    head, _ = multipart_head("slow.h5", 50 * 2**20)
    slow_body.sendall(head + b"\x89HDF")
    threads = [
        threading.Thread(target=trickle, args=(slow_headers, b"GET /api/health HTTP/1.1\r\n" + CLOSE + b"\r\n", stop, 0.5)),
        threading.Thread(target=trickle, args=(slow_body, b"\x00" * 1000, stop, 0.5)),
    ]
    for t in threads:
        t.start()
    latencies = []
    try:
        time.sleep(1.0)
        for _ in range(10):
            t0 = time.monotonic()
            status, body = exchange(api, b"GET /api/health HTTP/1.1\r\n" + CLOSE + b"\r\n")
            latencies.append(time.monotonic() - t0)
            assert status == 200 and body["redis"] is True
        # Both slow clients still hold their connections: nothing was answered or closed on them.
        for sock in (slow_headers, slow_body):
            sock.setblocking(False)
            with pytest.raises(BlockingIOError):
                sock.recv(1)
            sock.setblocking(True)
    finally:
        stop.set()
        for t in threads:
            t.join()
        for sock in (slow_headers, slow_body, silent):
            sock.close()
    median, worst = statistics.median(latencies) * 1000, max(latencies) * 1000
    print(f"\nhealth with 2 slow clients + 1 silent: median {median:.1f} ms, max {worst:.1f} ms")


def test_stalled_upload_is_answered_408_after_the_idle_timeout(api):
    with connect(api) as sock:
        head, _ = multipart_head("stalled.h5", 10 * 2**20)
        sock.sendall(head + b"\x89HDF" + b"\x00" * 4096)
        t0 = time.monotonic()
        status, body = read_response(sock)
    print(f"\nstalled upload answered {status} after {time.monotonic() - t0:.1f} s (IDLE_TIMEOUT={IDLE_TIMEOUT})")
    assert status == 408 and "stopped sending" in body["details"], body


def write_dataset(path, megabytes: int) -> None:
    n = megabytes * 2**20 // (3 * 32 * 32 * 4)
    rng = np.random.default_rng(0)
    with h5py.File(path, "w") as f:
        samples = f.create_dataset("samples", shape=(n, 3, 32, 32), dtype=np.float32)
        for i in range(0, n, 1024):
            samples[i : i + 1024] = rng.random((min(1024, n - i), 3, 32, 32), dtype=np.float32)
        labels = f.create_dataset("labels", data=np.arange(n) % 10)
        labels.attrs["num_classes"] = 10


def test_large_slow_upload_streams_to_disk_past_the_worker_timeout(api, tmp_path):
    """200 MB sent over about twice the worker timeout: it is stored, the worker is not
    killed, and the worker's memory does not grow with the upload."""
    path = tmp_path / "large.h5"
    write_dataset(path, 200)
    size = path.stat().st_size
    before = set(api.uploads.iterdir())
    pid = worker_pid(api)
    proc = psutil.Process(pid)
    baseline = proc.memory_info().rss
    peak = [baseline]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.05):
            peak[0] = max(peak[0], proc.memory_info().rss)

    sampler = threading.Thread(target=sample)
    sampler.start()
    head, epilogue = multipart_head("large.h5", size)
    pause = 2.5 * WORKER_TIMEOUT / (size / 2**20)  # per MiB: the upload lasts ~2.5 worker timeouts
    t0 = time.monotonic()
    try:
        with connect(api, timeout=120) as sock, open(path, "rb") as fh:
            sock.sendall(head)
            while chunk := fh.read(2**20):
                sock.sendall(chunk)
                time.sleep(pause)
            sock.sendall(epilogue)
            sent = time.monotonic() - t0
            status, body = read_response(sock)
    finally:
        done.set()
        sampler.join()
    growth = (peak[0] - baseline) / 2**20
    print(
        f"\n{size / 2**20:.0f} MB upload: sent in {sent:.1f} s (worker timeout {WORKER_TIMEOUT} s), answered {status} "
        f"after {time.monotonic() - t0:.1f} s; worker RSS {baseline / 2**20:.0f} -> peak {peak[0] / 2**20:.0f} MB (+{growth:.0f})"
    )
    assert sent > WORKER_TIMEOUT
    assert status in (201, 202) and body["size"] == size, body
    assert worker_pid(api) == pid, "the worker was restarted during the upload"
    assert growth < 100, f"worker RSS grew by {growth:.0f} MB during a {size / 2**20:.0f} MB upload"
    assert set(api.uploads.iterdir()) <= before, "spooled parts left behind in uploads/"


def test_upload_with_many_form_parts_is_413_json(api):
    """Non-file multipart parts are held in memory: a flood of them is refused, not buffered."""
    part = b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="f"\r\n\r\n' + b"x" * 1000 + b"\r\n"
    payload = part * 100 + b"--" + BOUNDARY + b"--\r\n"
    head = (
        b"POST /api/datasets HTTP/1.1\r\n" + CLOSE + b"Content-Type: multipart/form-data; boundary=" + BOUNDARY + b"\r\n"
        b"Content-Length: %d\r\n\r\n" % len(payload)
    )
    status, body = exchange(api, head + payload)
    # The body is 100 KB, far under the file limit: the answer names the limit it broke, not the file's.
    assert status == 413 and "at most 16 multipart parts" in body["error"], body
    assert body["details"] == {"max-parts": 16, "max-text-part-bytes": 256 * 1024}
    big = b"--" + BOUNDARY + b'\r\nContent-Disposition: form-data; name="note"\r\n\r\n' + b"x" * 300_000 + b"\r\n"
    payload = big + b"--" + BOUNDARY + b"--\r\n"
    head = (
        b"POST /api/models HTTP/1.1\r\n" + CLOSE + b"Content-Type: multipart/form-data; boundary=" + BOUNDARY + b"\r\n"
        b"Content-Length: %d\r\n\r\n" % len(payload)
    )
    status, body = exchange(api, head + payload)
    assert status == 413 and "no text part over 256 KiB" in body["error"], body


def test_config_reads_its_settings_from_the_environment():
    env = {**os.environ, "BIND": "0.0.0.0:9999", "WEB_CONCURRENCY": "3", "THREADS": "5", "WORKER_TIMEOUT": "7"}
    code = "import app.gunicorn_conf as c; print(c.bind, c.workers, c.threads, c.timeout, c.worker_class.__name__)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["['0.0.0.0:9999']", "3", "5", "7", "Worker"]


def test_worker_abort_answers_unanswered_requests_with_json_503(api):
    """SIGABRT is what the master sends a worker whose heartbeat stopped for WORKER_TIMEOUT:
    a request the worker had not answered gets a JSON 503, and a new worker takes over."""
    pid = worker_pid(api)
    with connect(api) as sock:
        head, _ = multipart_head("aborted.h5", 10 * 2**20)
        sock.sendall(head + b"\x89HDF")
        time.sleep(1.0)  # the app is now reading the body
        os.kill(pid, signal.SIGABRT)
        status, body = read_response(sock)
    assert status == 503 and "restarted" in body["error"], body
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            if exchange(api, b"GET /api/health HTTP/1.1\r\n" + CLOSE + b"\r\n")[0] == 200:
                break
        except (OSError, AssertionError):
            time.sleep(0.2)
    assert worker_pid(api) != pid
