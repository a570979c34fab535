"""The worker's cache of converted models, keyed by the model file's sha256.

What a conversion costs before onnx2pytorch runs (the softmax cut, the ONNX rewrites with
shape inference, the batch probe) is paid once per model: the rewritten graph is kept as
ONNX bytes beside a small JSON of its notes, in the worker's own directory
(``APPDATA/cache/conversion``, which no request can name). Both are data, read back with
protobuf and json: nothing is ever unpickled, and the bytes are the ones the rewrites made.

The key is the sha256 of the very bytes the job parses (read once, hashed and parsed from
the same buffer) and of the converter's version (onnx, onnx2pytorch, and the source of the
rewrites and the loader), so a model file changed under the same path, or a new rewrite,
never meets a stale entry. A model with external data is not cached: its bytes alone do not
name its weights. The cache is bounded by entries and bytes; the least recently used entries
go first. Entries are written to a temporary name and renamed, so workers sharing the data
directory never read half an entry.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

MB = 2**20
DEFAULT_ENTRIES = 32
DEFAULT_MB = 1024  # the defaults of CONVERSION_CACHE_ENTRIES and CONVERSION_CACHE_MB
ORPHAN_AGE = 600  # seconds


@functools.cache
def converter_version() -> str:
    """What the cached graph depends on besides the model: library versions and our rewrite code."""
    from importlib.metadata import version

    from . import conversion, models

    h = hashlib.sha256()
    for dist in ("onnx", "onnx2pytorch"):
        h.update(f"{dist}={version(dist)};".encode())
    for module in (conversion, models):
        h.update(Path(module.__file__).read_bytes())
    return h.hexdigest()[:16]


def worker_cache(settings: Any) -> ConversionCache | None:
    """The worker's cache as ``settings`` (a :class:`~app.config.Config`) size it; None when turned off."""
    if settings.conversion_cache_entries < 1 or settings.conversion_cache_mb < 1:
        return None
    directory = Path(settings.appdata).resolve() / "cache" / "conversion"
    return ConversionCache(directory, settings.conversion_cache_entries, settings.conversion_cache_mb * MB)


def cache_key(model_bytes: bytes) -> str:
    return hashlib.sha256(model_bytes).hexdigest() + "-" + converter_version()


@dataclass
class Entry:
    """A cached conversion: the rewritten graph's serialized bytes and the loader's notes."""

    graph: bytes
    notes: dict[str, Any]


class ConversionCache:
    """At most ``max_entries`` entries and ``max_bytes`` bytes of rewritten graphs in ``directory``."""

    def __init__(self, directory: Path, max_entries: int = DEFAULT_ENTRIES, max_bytes: int = DEFAULT_MB * MB) -> None:
        self.dir = Path(directory)
        self.max_entries, self.max_bytes = max_entries, max_bytes

    def _paths(self, key: str) -> tuple[Path, Path]:
        return self.dir / f"{key}.onnx", self.dir / f"{key}.json"

    def get(self, key: str) -> Entry | None:
        graph_path, notes_path = self._paths(key)
        try:
            notes = json.loads(notes_path.read_text())
            graph = graph_path.read_bytes()
        except (OSError, ValueError):
            return None  # absent, evicted meanwhile, or damaged: convert again
        if not isinstance(notes, dict) or notes.get("sha256") != hashlib.sha256(graph).hexdigest():
            return None  # a graph that is not the one its notes were written for
        try:
            os.utime(notes_path)  # recently used: evicted last
        except OSError:
            pass
        return Entry(graph, notes["notes"])

    def put(self, key: str, graph: bytes, notes: dict[str, Any]) -> bool:
        """Store an entry (False when it alone is over the byte bound, or the disk refused it)."""
        if len(graph) > self.max_bytes or self.max_entries < 1:
            return False
        graph_path, notes_path = self._paths(key)
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._write(graph_path, graph)
            # The notes last: an entry counts only once its notes (with the graph's hash) exist.
            self._write(notes_path, json.dumps({"sha256": hashlib.sha256(graph).hexdigest(), "notes": notes}).encode())
        except OSError as exc:
            log.warning("could not cache a converted model: %s", exc)
            graph_path.unlink(missing_ok=True)
            return False
        self.evict()
        return True

    def _write(self, path: Path, data: bytes) -> None:
        fd, tmp = tempfile.mkstemp(dir=self.dir, prefix=".tmp-")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

    def entries(self) -> list[tuple[float, int, str]]:
        """``(last use, bytes, key)`` of every complete entry, oldest first."""
        found = []
        for notes_path in self.dir.glob("*.json"):
            graph_path = notes_path.with_suffix(".onnx")
            try:
                found.append((notes_path.stat().st_mtime, graph_path.stat().st_size, notes_path.stem))
            except OSError:
                continue
        return sorted(found)

    def evict(self) -> None:
        """Drop the least recently used entries until both bounds hold, then any orphaned half entry."""
        entries = self.entries()
        total = sum(size for _, size, _ in entries)
        while entries and (len(entries) > self.max_entries or total > self.max_bytes):
            _, size, key = entries.pop(0)
            for path in self._paths(key)[::-1]:
                path.unlink(missing_ok=True)
            total -= size
        # Halves left by a crash or lost to a race; a young graph may be another worker's put in progress.
        for path in [*self.dir.glob("*.onnx"), *self.dir.glob("*.json"), *self.dir.glob(".tmp-*")]:
            other = path.with_suffix(".json" if path.suffix == ".onnx" else ".onnx")
            try:
                if not other.exists() and time.time() - path.stat().st_mtime > ORPHAN_AGE:
                    path.unlink(missing_ok=True)
            except OSError:
                continue
