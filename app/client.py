"""A small Python client for the API, standard library only.

from app.client import Client
c = Client("http://127.0.0.1:8000")
model = c.upload("models", "net.onnx")
data = c.upload("datasets", "val.h5")
job = c.submit({"trained-model": model["id"], "dataset": data["id"], "perturbation-values": [0, 0.05]})
print(c.wait(job["job_id"])["sec-curve"])
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

PENDING = ("validating", "verifying")  # a worker is still checking the uploaded file


class ApiError(Exception):
    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status, self.body = status, body


class Client:
    def __init__(self, base_url: str, api_key: str | None = None, timeout: float = 30.0) -> None:
        self.base = base_url.rstrip("/")
        self.api_key, self.timeout = api_key, timeout

    def send(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None) -> tuple[int, bytes]:
        """One request; returns (status, raw body). An error status raises ApiError (its JSON body
        decoded); a redirect is returned as is, not followed."""
        req = urllib.request.Request(self.base + path, data=body, method=method)
        if content_type:
            req.add_header("Content-Type", content_type)
        if self.api_key:
            req.add_header("X-API-Key", self.api_key)
        opener = urllib.request.build_opener(_NoRedirect)
        try:
            with opener.open(req, timeout=self.timeout) as resp:
                return resp.status, resp.read()
        except urllib.error.HTTPError as err:
            raw = err.read()
            if err.code in (301, 302, 303, 307, 308):
                return err.code, json.dumps({"location": err.headers.get("Location")}).encode()
            try:
                payload = json.loads(raw)
            except ValueError:
                payload = raw.decode(errors="replace")
            raise ApiError(err.code, payload) from None

    def request(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None) -> tuple[int, Any]:
        status, raw = self.send(method, path, body, content_type)
        return status, json.loads(raw) if raw else None

    def download(self, path: str) -> bytes:
        """A document the API serves (``…/output/csv``, ``…/plot.png``, ``…/report``) as bytes."""
        return self.send("GET", path)[1]

    def json(self, method: str, path: str, payload: Any = None) -> Any:
        body = json.dumps(payload).encode() if payload is not None else None
        return self.request(method, path, body, "application/json" if body else None)[1]

    def upload(
        self, kind: str, path: Path | str, *, wait: bool = True, timeout: float = 300, poll: float = 0.25
    ) -> dict[str, Any]:
        """Upload a model or dataset and wait until a worker has checked it (a model's verification,
        a big dataset's scan); return its ready record, or raise ApiError (422) when it was refused.
        ``wait=False`` returns the stored record at once (status ``verifying`` or ``validating``)."""
        path = Path(path)
        boundary = uuid.uuid4().hex
        head = (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n"
        ).encode()
        body = head + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode()
        meta = self.request("POST", f"/api/{kind}", body, f"multipart/form-data; boundary={boundary}")[1]
        deadline = time.monotonic() + timeout
        while wait and meta.get("status") in PENDING:
            if time.monotonic() > deadline:
                raise TimeoutError(f"{kind} {meta['id']} was still {meta['status']} after {timeout} s (is a worker running?)")
            time.sleep(poll)
            meta = self.json("GET", f"/api/{kind}/{meta['id']}")
        if meta.get("status") in ("rejected", "unsupported"):
            raise ApiError(422, {"error": f"{path.name}: {meta['status']}: {meta.get('reason')}", "details": meta})
        return meta

    def health(self) -> dict[str, Any]:
        return self.json("GET", "/api/health")

    def submit(self, request: dict[str, Any]) -> dict[str, Any]:
        return self.json("POST", "/api/security_evaluations", request)

    def status(self, job_id: str) -> dict[str, Any]:
        return self.json("GET", f"/api/security_evaluations/{job_id}")

    def output(self, job_id: str) -> dict[str, Any]:
        return self.json("GET", f"/api/security_evaluations/{job_id}/output")

    def delete(self, job_id: str) -> dict[str, Any]:
        return self.json("DELETE", f"/api/security_evaluations/{job_id}")

    def items(self, what: str, *, status: str | None = None, page_size: int = 100) -> Iterator[dict[str, Any]]:
        """Every item of a list (``security_evaluations``, ``models`` or ``datasets``), oldest
        first, fetched a page at a time."""
        key = "evaluations" if what == "security_evaluations" else what
        query: dict[str, Any] = {"limit": page_size, **({"status": status} if status else {})}
        while True:
            page = self.json("GET", f"/api/{what}?{urllib.parse.urlencode(query)}")
            yield from page[key]
            if not page.get("next-cursor"):
                return
            query["cursor"] = page["next-cursor"]

    def wait(
        self, job_id: str, *, timeout: float = 600, poll: float = 0.5, on_status: Callable[[dict[str, Any]], None] | None = None
    ) -> dict[str, Any]:
        """Poll until the job ends; return its output, or raise ApiError if it failed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            st = self.status(job_id)
            if on_status:
                on_status(st)
            if st["job-status"] == "finished":
                return self.output(job_id)
            if st["job-status"] in ("failed", "canceled"):
                raise ApiError(422, st)
            time.sleep(poll)
        raise TimeoutError(f"evaluation {job_id} did not finish in {timeout} s")


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args, **kwargs):
        return None
