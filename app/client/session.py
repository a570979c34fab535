"""The API's Python client, on ``httpx``: uploads stream from the open file, 503s are retried
as ``Retry-After`` says, and errors are typed (``app.client.errors``).

from app.client import Client
with Client("http://127.0.0.1:8000") as c:
    model = c.upload("models", "net.onnx")
    data = c.upload("datasets", "val.h5")
    job = c.submit({"trained-model": model["id"], "dataset": data["id"], "perturbation-values": [0, 0.05]})
    print(c.wait(job["job_id"])["sec-curve"])
"""

from __future__ import annotations

import email.utils
import json
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from .errors import ApiError, JobFailed, TimedOut, Unreachable

log = logging.getLogger(__name__)

PENDING = ("validating", "verifying")  # a worker is still checking the uploaded file
REFUSED = ("rejected", "unsupported")  # what a worker's check turned an upload into
ENDED = ("failed", "canceled")  # a job that ended without a curve
RETRY_STATUSES = frozenset({503})  # Redis down, gunicorn overloaded: the request was not acted on
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "PUT", "DELETE"})
REDIRECTS = frozenset({301, 302, 303, 307, 308})


class Client:
    """One service. ``retries`` more attempts after a 503 (any method: a 503 means the request was
    not acted on) or a connection error (a refused connection on any method, since nothing was sent;
    a dropped one only on idempotent methods); ``retry_budget`` bounds the seconds spent waiting
    between them. ``timeout`` is httpx's per-operation timeout (connect, each read and write)."""

    def __init__(
        self,
        base_url: str,
        api_key: str | None = None,
        timeout: float = 30.0,
        *,
        retries: int = 4,
        retry_budget: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.base = base_url.rstrip("/")
        self.api_key, self.timeout = api_key, timeout
        self.retries, self.retry_budget = retries, retry_budget
        self.http = httpx.Client(
            base_url=self.base,
            headers={"X-API-Key": api_key} if api_key else None,
            timeout=timeout,
            follow_redirects=False,
            # Below gunicorn's 5 s keep-alive: a pooled connection is never reused just as the server closes it.
            limits=httpx.Limits(keepalive_expiry=2.0),
            transport=transport,
        )

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- one request, with its retries ------------------------------------------------------------

    def _attempt(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        """One request under the retry policy; returns the last answer (maybe an error status)."""
        waited = 0.0
        for attempt in range(self.retries + 1):
            last = attempt == self.retries
            try:
                response = self.http.request(method, path, **kwargs)
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:  # nothing was sent: any method may retry
                if last:
                    raise _transport_error(method, self.base + path, exc) from None
                delay, why = _backoff(attempt), f"{type(exc).__name__}: {exc}"
            except httpx.TransportError as exc:  # sent, maybe acted on: only an idempotent request may go again
                if last or method not in IDEMPOTENT:
                    raise _transport_error(method, self.base + path, exc) from None
                delay, why = _backoff(attempt), f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code not in RETRY_STATUSES or last:
                    return response
                delay, why = retry_after(response.headers.get("Retry-After"), _backoff(attempt)), f"HTTP {response.status_code}"
                if waited + delay > self.retry_budget:
                    return response
            if waited + delay > self.retry_budget:
                raise Unreachable(f"{method} {self.base}{path}: {why}; gave up after {waited:.0f} s of retries")
            log.warning("%s %s: %s; retrying in %.1f s (%d of %d)", method, path, why, delay, attempt + 1, self.retries)
            time.sleep(delay)
            waited += delay
        raise AssertionError("unreachable")  # the loop returns or raises on its last attempt

    def send(
        self, method: str, path: str, body: bytes | None = None, content_type: str | None = None, **kwargs: Any
    ) -> tuple[int, bytes]:
        """One request; returns (status, raw body). An error status raises ApiError (its JSON body
        decoded); a redirect is returned as is, not followed (its body ``{"location": ...}``).
        ``kwargs`` go to httpx (``files``, ``data``, ``params``)."""
        headers = {"Content-Type": content_type} if content_type else None
        response = self._attempt(method, path, content=body, headers=headers, **kwargs)
        if response.status_code in REDIRECTS:
            return response.status_code, json.dumps({"location": response.headers.get("Location")}).encode()
        if response.status_code >= 400:
            try:
                payload = response.json()
            except ValueError:
                payload = response.text
            raise ApiError(response.status_code, payload)
        return response.status_code, response.content

    def request(
        self, method: str, path: str, body: bytes | None = None, content_type: str | None = None, **kwargs: Any
    ) -> tuple[int, Any]:
        status, raw = self.send(method, path, body, content_type, **kwargs)
        return status, json.loads(raw) if raw else None

    def json(self, method: str, path: str, payload: Any = None, **kwargs: Any) -> Any:
        body = json.dumps(payload).encode() if payload is not None else None
        return self.request(method, path, body, "application/json" if body else None, **kwargs)[1]

    def download(self, path: str) -> bytes:
        """A document the API serves (``…/output/csv``, ``…/plot.png``, ``…/report``) as bytes."""
        return self.send("GET", path)[1]

    # -- files -------------------------------------------------------------------------------------

    def upload(
        self,
        kind: str,
        path: Path | str,
        *,
        external_data: Sequence[Path | str] = (),
        wait: bool = True,
        timeout: float = 300,
        poll: float = 0.25,
    ) -> dict[str, Any]:
        """Upload a model (``.onnx``, or a ``.zip`` with its external data) or a dataset and wait until
        a worker has checked it; return its ready record, or raise ApiError (422) when it was refused.
        ``external_data``: a model's data files, sent beside it in the field ``external-data``.
        ``wait=False`` returns the stored record at once (status ``verifying`` or ``validating``).
        Each file streams from disk in httpx's 64 KiB chunks, and again from its start on a retry."""
        kind = kind if kind.endswith("s") else kind + "s"
        path = Path(path)
        with ExitStack() as files:
            parts = [("file", (path.name, files.enter_context(path.open("rb")), "application/octet-stream"))]
            for extra in map(Path, external_data):
                parts.append(("external-data", (extra.name, files.enter_context(extra.open("rb")), "application/octet-stream")))
            meta = self.request("POST", f"/api/{kind}", files=parts)[1]
        return self.settle(kind, meta, timeout=timeout, poll=poll) if wait else meta

    def settle(self, kind: str, meta: dict[str, Any], *, timeout: float = 300, poll: float = 0.25) -> dict[str, Any]:
        """Poll an uploaded file's record until its checks end; ``ready``, or ApiError (422) naming the reason."""
        deadline = time.monotonic() + timeout
        while meta.get("status") in PENDING:
            if time.monotonic() > deadline:
                raise TimedOut(f"{kind} {meta['id']} was still {meta['status']} after {timeout} s (is a worker running?)")
            time.sleep(poll)
            meta = self.json("GET", f"/api/{kind}/{meta['id']}")
        if meta.get("status") in REFUSED:
            raise ApiError(422, {"error": f"{meta.get('name')}: {meta['status']}: {meta.get('reason')}", "details": meta})
        return meta

    # -- evaluations -------------------------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        return self.json("GET", "/api/health")

    def submit(self, request: dict[str, Any]) -> dict[str, Any]:
        return self.json("POST", "/api/security_evaluations", request)

    def status(self, job_id: str) -> dict[str, Any]:
        return self.json("GET", f"/api/security_evaluations/{job_id}")

    def output(self, job_id: str) -> dict[str, Any]:
        return self.json("GET", f"/api/security_evaluations/{job_id}/output")

    def csv(self, job_id: str) -> str:
        """The server's CSV of a finished evaluation (one row per epsilon)."""
        return self.download(f"/api/security_evaluations/{job_id}/output/csv").decode()

    def delete(self, job_id: str) -> dict[str, Any]:
        return self.json("DELETE", f"/api/security_evaluations/{job_id}")

    def items(self, what: str, *, status: str | None = None, page_size: int = 100) -> Iterator[dict[str, Any]]:
        """Every item of a list (``security_evaluations``, ``models`` or ``datasets``), oldest
        first, fetched a page at a time."""
        key = "evaluations" if what == "security_evaluations" else what
        query: dict[str, Any] = {"limit": page_size, **({"status": status} if status else {})}
        while True:
            page = self.json("GET", f"/api/{what}", params=query)
            yield from page[key]
            if not page.get("next-cursor"):
                return
            query["cursor"] = page["next-cursor"]

    def wait(
        self, job_id: str, *, timeout: float = 600, poll: float = 0.5, on_status: Callable[[dict[str, Any]], None] | None = None
    ) -> dict[str, Any]:
        """Poll until the job ends; return its output, raise JobFailed if it failed or was canceled,
        TimedOut after ``timeout`` seconds. ``on_status`` sees every status record polled."""
        deadline = time.monotonic() + timeout
        while True:
            st = self.status(job_id)
            if on_status:
                on_status(st)
            if st["job-status"] == "finished":
                return self.output(job_id)
            if st["job-status"] in ENDED:
                raise JobFailed(st)
            if time.monotonic() + poll > deadline:
                raise TimedOut(f"evaluation {job_id} did not finish in {timeout} s (it is {st['job-status']})")
            time.sleep(poll)


def retry_after(value: str | None, default: float) -> float:
    """Seconds a ``Retry-After`` header asks for (delta-seconds or an HTTP date), else ``default``."""
    if not value:
        return default
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return default
    return max(0.0, when.timestamp() - time.time())


def _backoff(attempt: int) -> float:
    return min(8.0, 0.5 * 2**attempt)


def _transport_error(method: str, url: str, exc: httpx.TransportError) -> OSError:
    if isinstance(exc, httpx.TimeoutException):
        return TimedOut(f"{method} {url}: {type(exc).__name__} ({exc or 'no answer in time'})")
    return Unreachable(f"{method} {url}: {type(exc).__name__}: {exc}")
