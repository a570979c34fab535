"""A worker on another host: its inputs fetched from the API, its artifacts sent back (no torch).

With ``API_URL`` set, a worker shares nothing with the API but Redis: it fetches each model and
dataset a job needs from ``/api/internal/`` (``app.api.internal``) with its ``WORKER_TOKEN``,
streaming to a temporary file while hashing it, and keeps it in its fetch cache
(``app.fetchcache``) under the sha256 it was checked against: a job never reads bytes whose hash
differs from the one the API stored (an upload's address, a bundle's manifest hash, a named file's
hash). After the job, its artifacts (``app.artifacts``) go back to the API in one tar, before its
status says finished; a merge fetches its shards' artifacts the same way. Checkpoints stay on the
worker's disk: a job resumed on another host restarts its unfinished part.

Without ``API_URL`` nothing here runs: the worker reads the data directory it shares with the API.
Connection errors and 502/503/504 answers are retried with backoff (``Retry-After`` honoured);
anything else the API refuses (401, 404, ...) fails the job with a message naming it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from . import artifacts
from .bundles import DATA_NAME_RE
from .config import Config
from .exceptions import TransferError, UnsafePathError
from .fetchcache import MB, FetchCache
from .storage import BLOB_RE, BUNDLE_GRAPH, CHUNK, Storage, bundle_sha256, file_scope

SHA_RE = re.compile(r"[0-9a-f]{64}")
SUFFIX_RE = re.compile(r"\.[a-z0-9]{1,8}")
SHA_HEADER = "X-Content-SHA256"  # app.api.internal's headers (the API's module is not imported by a worker)
VERSION_HEADER = "X-File-Version"
TOKEN_HEADER = "X-Attempt-Token"
ATTEMPTS = 6  # one try and five retries: 0.5 + 1 + 2 + 4 + 8 s of backoff
RETRIED_STATUS = (502, 503, 504)
TIMEOUT = httpx.Timeout(30.0, connect=10.0)


def is_remote(settings: Config) -> bool:
    return bool(settings.api_url)


class Remote:
    """The API as a worker on another host reaches it."""

    def __init__(self, settings: Config) -> None:
        self.settings = settings
        self.base = settings.api_url.rstrip("/") + "/api/internal"
        self.cache = FetchCache(settings.data_dir / "cache" / "fetched", settings.worker_cache_mb * MB)
        self.headers = {"Authorization": f"Bearer {settings.worker_token}"}

    # -- HTTP with retries ---------------------------------------------------
    @contextlib.contextmanager
    def _request(self, method: str, path: str, what: str, **kwargs: Any):
        """A streamed response with a 2xx status, after retries; raises :class:`TransferError`."""
        delay = 0.5
        with httpx.Client(headers=self.headers, timeout=TIMEOUT) as client:
            for attempt in range(ATTEMPTS):
                last = attempt == ATTEMPTS - 1
                try:
                    if callable(kwargs.get("content")):
                        kwargs = {**kwargs, "content": kwargs["content"]()}  # a fresh body per try
                    with client.stream(method, self.base + path, **kwargs) as response:
                        if response.status_code in RETRIED_STATUS and not last:
                            wait = response.headers.get("Retry-After", "")
                            time.sleep(max(delay, float(wait)) if wait.isdigit() else delay)
                            delay *= 2
                            continue
                        if response.status_code >= 400:
                            response.read()
                            raise TransferError(self._refusal(response, what), details={"status": response.status_code})
                        yield response
                        return
                except httpx.TransportError as exc:
                    if last:
                        raise TransferError(
                            f"cannot reach the API at API_URL to {what}: {type(exc).__name__} after {ATTEMPTS} tries"
                        ) from None
                    time.sleep(delay)
                    delay *= 2
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _refusal(response: httpx.Response, what: str) -> str:
        try:
            said = str(response.json().get("error", ""))[:300]
        except ValueError:
            said = ""
        if response.status_code == 401:
            return f"the API refused this worker's WORKER_TOKEN (401) to {what}: the API and workers need the same WORKER_TOKEN"
        return f"the API answered {response.status_code} to {what}" + (f": {said}" if said else "")

    @staticmethod
    def _save(response: httpx.Response, dest: Path, want: str, what: str) -> str:
        """Stream a response's body to ``dest`` while hashing it; the hash must be ``want`` (when given),
        or nothing is kept and the job fails rather than read other bytes than those the API stored."""
        digest = hashlib.sha256()
        with open(dest, "wb") as out:
            for chunk in response.iter_bytes(CHUNK):
                digest.update(chunk)
                out.write(chunk)
        got = digest.hexdigest()
        if want and got != want:
            dest.unlink(missing_ok=True)
            raise TransferError(
                f"the {what} fetched from the API does not match its sha256 (expected {want[:16]}..., got {got[:16]}...): "
                "the stored file changed or was damaged; upload it again",
                details={"expected": want, "got": got},
            )
        return got

    def _download(self, path: str, dest: Path, what: str, expected: str | None = None) -> str:
        """GET ``path`` into ``dest``; returns its sha256 (checked against ``expected`` when given)."""
        with self._request("GET", path, f"fetch the {what}") as response:
            return self._save(response, dest, expected or "", what)

    # -- inputs ----------------------------------------------------------------
    def blob(self, sha256: str, suffix: str, held: contextlib.ExitStack, what: str) -> Path:
        if not SHA_RE.fullmatch(sha256) or not SUFFIX_RE.fullmatch(suffix):
            raise TransferError(f"the {what}'s record has no usable sha256")
        path, _ = self.cache.hold(
            sha256 + suffix, lambda tmp: self._download(f"/blobs/{sha256}", tmp, what, sha256), held
        )
        return path

    def bundle(self, sha256: str, held: contextlib.ExitStack, what: str) -> Path:
        """A model with external data: every file fetched, then the manifest's hash checked whole."""
        if not SHA_RE.fullmatch(sha256):
            raise TransferError(f"the {what}'s record has no usable sha256")

        def fill(tmp: Path) -> None:
            with self._request("GET", f"/bundles/{sha256}", f"list the {what}'s files") as response:
                files = json.loads(response.read())["files"]
            tmp.mkdir()
            hashes = {}
            for entry in files:
                name = str(entry["name"])
                if name != BUNDLE_GRAPH and not DATA_NAME_RE.fullmatch(name):
                    raise TransferError(f"the API listed a file {name[:60]!r} that no bundle may hold")
                hashes[name] = self._download(f"/bundles/{sha256}/{name}", tmp / name, what)
            if bundle_sha256(hashes) != sha256:
                raise TransferError(
                    f"the {what}'s files fetched from the API do not match its sha256: "
                    "the stored files changed or were damaged; upload it again",
                    details={"expected": sha256},
                )

        path, _ = self.cache.hold(f"{sha256}.bundle", fill, held)
        return path / BUNDLE_GRAPH

    def named(self, relative: str, owner: str | None, held: contextlib.ExitStack, what: str) -> tuple[Path, str]:
        """A file named by path, kept by the hash the API sends ahead of it (a cached one is not
        downloaded again); returns (path, the API's version of it, for the caches keyed by version there)."""
        suffix = Path(relative).suffix.lower()
        suffix = suffix if SUFFIX_RE.fullmatch(suffix) else ""
        params = {"path": relative, **({"owner": owner} if owner is not None else {})}
        label = f"{what} {relative[:200]!r}"
        with self._request("GET", "/named-files", f"fetch the {label}", params=params) as response:
            sha256 = response.headers.get(SHA_HEADER, "")
            if not SHA_RE.fullmatch(sha256):
                raise TransferError(f"the API sent the {label} without its sha256")
            path, _ = self.cache.hold(sha256 + suffix, lambda tmp: self._save(response, tmp, sha256, label), held)
            return path, response.headers.get(VERSION_HEADER, "")

    def job_input(self, ref: dict[str, Any], owner: str, held: contextlib.ExitStack, what: str) -> Path:
        """The local copy of the file a stored job reads (``Storage.job_input``'s remote twin)."""
        kind = ref.get("kind") or ("upload" if ref.get("sha256") else "file")
        if kind == "upload":
            rel = str(ref.get("path", ""))
            if not BLOB_RE.fullmatch(rel):
                raise UnsafePathError("not a stored upload's path")
            if rel.endswith("/" + BUNDLE_GRAPH):
                return self.bundle(ref["sha256"], held, what)
            return self.blob(ref["sha256"], Path(rel).suffix, held, what)
        if not self.settings.file_references:
            raise UnsafePathError("file references are disabled on this service (FILE_REFERENCES=off)")
        return self.named(ref["path"], owner, held, what)[0]

    # -- artifacts -------------------------------------------------------------
    def send_artifacts(self, job_id: str, job_dir: Path, token: str | None) -> None:
        """PUT the job's artifacts to the API (before its status says finished)."""
        with tempfile.TemporaryFile(dir=job_dir) as tar:
            artifacts.pack(job_dir, tar)

            def body():
                tar.seek(0)
                return tar

            headers = {TOKEN_HEADER: token} if token else {}
            with self._request("PUT", f"/evaluations/{job_id}/artifacts", "send the results", content=body, headers=headers):
                pass

    def fetch_artifacts(self, job_id: str, job_dir: Path) -> None:
        """A finished job's artifacts from the API into ``job_dir`` (checked as the API checks them)."""
        job_dir.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=job_dir.parent) as tar:
            with self._request("GET", f"/evaluations/{job_id}/artifacts", f"fetch the results of {job_id}") as response:
                for chunk in response.iter_bytes(CHUNK):
                    tar.write(chunk)
            tar.seek(0)
            artifacts.extract_to(tar, job_dir, self.settings.max_upload_mb * MB)


def job_input(settings: Config, storage: Storage, ref: dict[str, Any], owner: str, held: contextlib.ExitStack, what: str) -> Path:
    """The file a job reads: from the shared data directory, or fetched from the API with ``API_URL``."""
    if is_remote(settings):
        return Remote(settings).job_input(ref, owner, held, what)
    return storage.job_input(ref, file_scope(owner, bool(settings.api_keys)), settings.file_references, what=what)
