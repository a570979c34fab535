"""The Python client (app.client) against real HTTP servers on loopback: uploads stream from disk under a
hard memory bound, 503s wait as Retry-After says, connection errors are retried only where that is safe.

The scripted server is a real one (http.server on a socket): it answers what a test lists, in order, the
way the API does when Redis is down (503 + Retry-After) or a process dies mid-request (a dropped
connection). The live API's own 503 is exercised in test_remote_cli.py."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from app.client import ApiError, Client, JobFailed, TimedOut, Unreachable
from app.redis_server import free_port
from conftest import ROOT


class Scripted(BaseHTTPRequestHandler):
    """Reads each request's whole body (counting it), then does the next action of the server's script:
    ``(status, headers, json_body)``, or ``"drop"`` to close the connection without answering."""

    protocol_version = "HTTP/1.1"

    def _serve(self) -> None:
        self.close_connection = True  # one request per connection: the order of answers stays obvious
        length = int(self.headers.get("Content-Length") or 0)
        received, left = 0, length
        while left:
            chunk = self.rfile.read(min(left, 2**20))
            if not chunk:
                break
            received, left = received + len(chunk), left - len(chunk)
        self.server.seen.append(
            {"method": self.command, "path": self.path, "length": length, "received": received, "at": time.monotonic()}
        )
        action = self.server.script.pop(0)
        if action == "drop":
            return
        status, headers, body = action
        raw = json.dumps(body).encode()
        self.send_response(status)
        fixed = {"Content-Type": "application/json", "Content-Length": str(len(raw)), "Connection": "close"}
        for name, value in {**headers, **fixed}.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(raw)

    do_GET = do_POST = do_DELETE = _serve

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def scripted():
    """Start a scripted server on a free port: ``start(script, port=None)`` returns it (``.url``, ``.seen``)."""
    servers = []

    def start(script: list, port: int | None = None) -> ThreadingHTTPServer:
        server = ThreadingHTTPServer(("127.0.0.1", port or free_port()), Scripted)
        server.script, server.seen = list(script), []
        server.url = f"http://127.0.0.1:{server.server_address[1]}"
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


READY = (201, {}, {"id": "a" * 32, "status": "ready"})
REDIS_DOWN = (503, {"Retry-After": "1"}, {"error": "the job store (Redis) is unreachable; retry shortly"})

# Run in a child process: warm up with a small upload, cap the address space at its current size plus
# HEADROOM_MB, upload the big file (the server answers 503 once, so it is sent twice), then show that the
# cap is real: reading the same file whole into memory fails under it.
CHILD = """
import json, resource, sys
from pathlib import Path
from app.client import Client
url, big, small, headroom = sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4])
client = Client(url, retries=2)
client.upload("datasets", small, wait=False)
vm_kb = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmSize:"))
rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
resource.setrlimit(resource.RLIMIT_AS, (vm_kb * 1024 + headroom * 2**20, resource.RLIM_INFINITY))
record = client.upload("datasets", big, wait=False)
rss_after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    big.read_bytes()
    whole = "read"
except MemoryError:
    whole = "MemoryError"
print(json.dumps({"record": record, "rss_growth_kb": rss_after - rss_before, "whole_read": whole}))
"""


def test_upload_streams_a_file_four_times_the_memory_cap_and_resends_it_after_a_503(scripted, tmp_path):
    big_mb, headroom_mb = 256, 64
    big, small = tmp_path / "big.h5", tmp_path / "small.h5"
    with open(big, "wb") as fh:
        fh.truncate(big_mb * 2**20)  # sparse: no disk used, but every byte is read and sent
    small.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(1000))
    server = scripted([READY, REDIS_DOWN, READY])
    child = subprocess.run(
        [sys.executable, "-c", CHILD, server.url, str(big), str(small), str(headroom_mb)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert child.returncode == 0, child.stderr
    report = json.loads(child.stdout)
    growth = report["rss_growth_kb"] / 1024
    print(f"\nuploading {big_mb} MiB under a +{headroom_mb} MiB address-space cap: peak RSS grew {growth:.1f} MiB")
    assert report["record"]["status"] == "ready"
    assert report["whole_read"] == "MemoryError"  # the cap would have stopped a client that reads the file whole
    first, second = server.seen[1], server.seen[2]
    assert first["length"] > big_mb * 2**20 and first["received"] == first["length"]  # all of it, as declared
    assert second["received"] == first["received"]  # the retry sent the file again from its start
    assert second["at"] - first["at"] >= 0.9  # after the Retry-After: 1 the server asked for
    assert "retrying in 1.0 s" in child.stderr


def test_503_retries_are_bounded_and_the_last_answer_is_a_typed_error(scripted):
    server = scripted([REDIS_DOWN] * 3)
    client = Client(server.url, retries=2, retry_budget=30)
    with pytest.raises(ApiError) as err:
        client.submit({"trained-model": "x", "dataset": "y"})
    assert err.value.status == 503 and "Redis" in err.value.message
    assert [s["method"] for s in server.seen] == ["POST"] * 3  # a 503 was not acted on: a POST may go again
    # A Retry-After beyond what is left of the budget is not waited for.
    server = scripted([(503, {"Retry-After": "120"}, {"error": "busy"})])
    with pytest.raises(ApiError) as err:
        Client(server.url, retries=3, retry_budget=30).health()
    assert err.value.status == 503 and len(server.seen) == 1


def test_connection_errors_are_retried_only_where_safe(scripted):
    # Refused (nothing listens yet; the server starts a moment later): retried, for any method.
    port = free_port()
    threading.Timer(0.8, scripted, args=([(200, {}, {"status": "ok"})], port)).start()
    assert Client(f"http://127.0.0.1:{port}", retries=4).health() == {"status": "ok"}
    # Dropped after the request was sent: a GET goes again, a POST does not (it may have been acted on).
    server = scripted(["drop", (200, {}, {"job_id": "j", "job-status": "queued"})])
    client = Client(server.url, retries=2)
    assert client.status("j")["job-status"] == "queued" and len(server.seen) == 2
    server = scripted(["drop", READY])
    with pytest.raises(Unreachable):
        Client(server.url, retries=2).submit({"trained-model": "x", "dataset": "y"})
    assert len(server.seen) == 1
    with pytest.raises(OSError):  # a plain OSError to code written for the standard library's client
        Client(f"http://127.0.0.1:{free_port()}", retries=1).health()


def test_wait_raises_job_failed_with_the_record_and_times_out(scripted):
    failed = {"job_id": "j", "job-status": "failed", "error": "the model is unsupported: Frobnicate"}
    server = scripted([(200, {}, failed)])
    with pytest.raises(JobFailed) as err:
        Client(server.url).wait("j")
    assert err.value.record == failed and "Frobnicate" in err.value.message
    server = scripted([(200, {}, {"job_id": "j", "job-status": "started"})] * 3)
    with pytest.raises(TimedOut):
        Client(server.url).wait("j", timeout=0.2, poll=0.1)


def test_a_model_with_external_data_uploads_from_its_two_files(live_api, assets, tmp_path):
    from test_external_data import DATA, export_external

    graph, data = export_external(assets.model, tmp_path / "export")
    with Client(live_api) as client:
        record = client.upload("models", graph, external_data=[data])  # verified by the session's worker
        assert record["status"] == "ready" and record["external-data"] == [DATA]
        assert record["size"] == graph.stat().st_size + data.stat().st_size
        with pytest.raises(ApiError) as err:  # the graph alone: the API's 422, typed, its message kept
            client.upload("models", graph)
    assert err.value.status == 422 and "external-data" in err.value.message
