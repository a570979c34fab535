"""Service settings, read from the environment with documented defaults.

Every setting can also be passed to ``create_app(config)`` as a mapping, which
is how the tests build isolated apps.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

PUBLIC = "public"  # the one tenant of a service run without API keys


def _env_int(name: str, default: int) -> int:
    raw = os.environ.get(name)
    return int(raw) if raw not in (None, "") else default


def _env_switch(name: str, default: bool) -> bool:
    raw = os.environ.get(name, "").strip().lower()
    if not raw:
        return default
    if raw in ("on", "true", "1", "yes"):
        return True
    if raw in ("off", "false", "0", "no"):
        return False
    raise ValueError(f"{name} must be 'on' or 'off', got {raw!r}")


def _load_api_keys() -> dict[str, str]:
    """API keys from ``API_KEYS`` ("key" or "tenant:key", comma separated) or ``API_KEYS_FILE``.

    An empty result means the service runs open (single tenant "public").
    """
    entries: list[str] = []
    raw = os.environ.get("API_KEYS", "")
    entries += [e for e in raw.split(",") if e.strip()]
    path = os.environ.get("API_KEYS_FILE")
    if path:
        lines = Path(path).read_text().splitlines()
        entries += [ln for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]
    return parse_api_keys(entries)


def key_tenant(key: str) -> str:
    """The tenant of a bare key: a hash of the whole key, so keys sharing a prefix stay apart
    and the name reveals nothing usable about the key."""
    return "key-" + hashlib.sha256(key.encode()).hexdigest()[:16]


def parse_api_keys(entries: list[str]) -> dict[str, str]:
    """Map key -> tenant name from ``tenant:key`` or bare ``key`` entries."""
    keys: dict[str, str] = {}
    for entry in entries:
        entry = entry.strip()
        tenant, sep, key = entry.partition(":")
        if not sep:
            tenant, key = key_tenant(entry), entry
        key, tenant = key.strip(), tenant.strip()
        if not key or not tenant:
            raise ValueError("an API_KEYS entry has an empty key or tenant name")
        keys[key] = tenant
    return keys


@dataclass(frozen=True)
class Config:
    """Settings shared by the API, the worker and the command line."""

    redis_url: str = ""
    appdata: Path = Path("appdata")
    queue_name: str = "evaluations"
    max_upload_mb: int = 512
    max_json_kb: int = 256
    job_timeout: int = 24 * 3600
    max_perturbation_values: int = 50
    api_keys: dict[str, str] = field(default_factory=dict)
    max_concurrent_jobs: int = 0
    file_references: bool = True
    key_prefix: str = "secev"
    max_job_disk_mb: int = 0  # per-job cap on checkpoint files (0: only the free space counts)
    max_job_memory_mb: int = 0  # per-job memory budget for a batch (0: what the machine has free)
    conversion_cache_entries: int = 32  # converted models a worker keeps, by sha256 (0: no cache)
    conversion_cache_mb: int = 1024  # and their bytes on disk, under APPDATA/cache/conversion
    max_shards: int = 4  # the most shards one evaluation is split into (app.shards); 1: never shard
    # torch threads per job (0: torch's default, every core). Several workers on one host each taking every
    # core wait on each other's threads: measured, one job 11x slower than with one thread each.
    torch_threads: int = 0
    # Workers on other hosts (app.remote, app.api.internal). api_url: set on a worker = it fetches its inputs
    # from the API over HTTP and sends its results back there, instead of reading APPDATA shared with the API.
    # worker_token: the shared secret of /api/internal/* (API and worker; unset on the API = those routes are 404).
    # worker_cache_mb: the bytes of fetched models and datasets a worker keeps, by sha256, under APPDATA/cache/fetched.
    api_url: str = ""
    worker_token: str = ""
    worker_cache_mb: int = 4096
    # deployment (issue 10, H1): /metrics answers only with this bearer token when set (empty: open, aggregates only)
    metrics_token: str = ""

    @classmethod
    def from_env(cls) -> Config:
        return cls(
            redis_url=os.environ.get("REDIS_URL", ""),
            appdata=Path(os.environ.get("APPDATA", "appdata")),
            queue_name=os.environ.get("QUEUE_NAME", "evaluations"),
            max_upload_mb=_env_int("MAX_UPLOAD_MB", 512),
            max_json_kb=_env_int("MAX_JSON_KB", 256),
            job_timeout=_env_int("JOB_TIMEOUT", 24 * 3600),
            api_keys=_load_api_keys(),
            max_concurrent_jobs=_env_int("MAX_CONCURRENT_JOBS", 0),
            file_references=_env_switch("FILE_REFERENCES", True),
            max_job_disk_mb=_env_int("MAX_JOB_DISK_MB", 0),
            max_job_memory_mb=_env_int("MAX_JOB_MEMORY_MB", 0),
            conversion_cache_entries=_env_int("CONVERSION_CACHE_ENTRIES", 32),
            conversion_cache_mb=_env_int("CONVERSION_CACHE_MB", 1024),
            max_shards=max(1, _env_int("MAX_SHARDS", 4)),
            torch_threads=max(0, _env_int("TORCH_THREADS", 0)),
            # workers on other hosts
            api_url=os.environ.get("API_URL", "").strip(),
            worker_token=os.environ.get("WORKER_TOKEN", "").strip(),
            worker_cache_mb=max(0, _env_int("WORKER_CACHE_MB", 4096)),
            # deployment (issue 10, H1)
            metrics_token=os.environ.get("METRICS_TOKEN", "").strip(),
        )

    def updated(self, overrides: Mapping[str, Any] | None) -> Config:
        """A copy with the given fields replaced (unknown names are an error)."""
        if not overrides:
            return self
        names = {f.name for f in fields(self)}
        unknown = set(overrides) - names
        if unknown:
            raise TypeError(f"unknown config fields: {sorted(unknown)}")
        values = dict(overrides)
        if "appdata" in values:
            values["appdata"] = Path(values["appdata"])
        return replace(self, **values)

    @property
    def data_dir(self) -> Path:
        return self.appdata.resolve()
