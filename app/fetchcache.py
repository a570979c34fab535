"""A worker's cache of files fetched from the API, by sha256, bounded in bytes (no torch).

Under ``APPDATA/cache/fetched`` (the worker's own data directory, which no request can name)::

    <sha256><.ext>        an uploaded model or dataset, or a file named by path, by its content's hash
    <sha256>.bundle/      a model with external data: ``model.onnx`` and its data files
    <entry>.lock          held shared by every job using the entry; its mtime is the entry's last use
    <entry>.fill          held exclusively by the one process downloading the entry
    .tmp-*                a download in progress (or a crashed one's, removed once old)

The ideas of the conversion cache (``app.engine.convcache``): least recently used entries go first,
entries appear by an atomic rename, so a reader never meets half a file, and a crash's leftovers are
swept once old. What this one adds, since several work-horses of one worker and several workers on
one host may share the folder: ``flock`` locks. A job holds a shared lock on each entry it reads for
as long as it runs, and eviction takes an entry only when it can lock it exclusively, so a file in
use is never removed (the bound may then be exceeded until those jobs end). Two processes wanting
the same missing entry download it once: the second waits on the ``.fill`` lock and finds it there.
The locks are released by the kernel when a process dies, so a killed job never pins an entry.
The folder must be on a local disk (``flock`` over NFS is not to be relied on).
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import time
import uuid
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

MB = 2**20
ORPHAN_AGE = 600  # seconds: a download older than this is a crashed one's


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.iterdir() if p.is_file())
    return path.stat().st_size


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


class FetchCache:
    """At most ``max_bytes`` of fetched files in ``directory``, least recently used evicted first."""

    def __init__(self, directory: Path, max_bytes: int) -> None:
        self.dir = Path(directory)
        self.max_bytes = max_bytes

    def _open_lock(self, name: str):
        return open(self.dir / name, "a+b")  # noqa: SIM115 - held for the job's life, closed by its ExitStack

    def hold(self, key: str, fill: Callable[[Path], None], held: contextlib.ExitStack) -> tuple[Path, bool]:
        """The entry ``key``, filled by ``fill(tmp)`` (which writes a file or a folder at ``tmp``, or
        raises) when missing; it stays locked in use until ``held`` closes. Returns (path, downloaded)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        lock = self._open_lock(f"{key}.lock")
        held.callback(lock.close)  # closing the file releases the shared lock
        fcntl.flock(lock, fcntl.LOCK_SH)
        path = self.dir / key
        downloaded = False
        if not path.exists():
            with self._open_lock(f"{key}.fill") as filler:
                fcntl.flock(filler, fcntl.LOCK_EX)  # one download per entry; the others wait and find it
                if not path.exists():
                    tmp = self.dir / f".tmp-{uuid.uuid4().hex}"
                    try:
                        fill(tmp)
                        os.rename(tmp, path)
                    except BaseException:
                        _remove(tmp)
                        raise
                    downloaded = True
        os.utime(self.dir / f"{key}.lock")  # last use; the entry's own mtime stays its download time
        self.evict()
        return path, downloaded

    def entries(self) -> list[tuple[float, int, str]]:
        """``(last use, bytes, key)`` of every complete entry, oldest first."""
        found = []
        for lock in self.dir.glob("*.lock"):
            key = lock.name[: -len(".lock")]
            try:
                found.append((lock.stat().st_mtime, _size(self.dir / key), key))
            except OSError:
                continue  # never filled, or evicted meanwhile
        return sorted(found)

    def evict(self) -> list[str]:
        """Remove least recently used entries no job holds until the bound holds; returns their keys."""
        removed: list[str] = []
        with self._open_lock(".evict") as guard:
            fcntl.flock(guard, fcntl.LOCK_EX)  # one evictor at a time: each counts the same entries once
            entries = self.entries()
            total = sum(size for _, size, _ in entries)
            for _, size, key in entries:
                if total <= self.max_bytes:
                    break
                with self._open_lock(f"{key}.lock") as lock:
                    try:
                        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        continue  # a running job reads it
                    _remove(self.dir / key)
                total -= size
                removed.append(key)
            for tmp in self.dir.glob(".tmp-*"):
                try:
                    if time.time() - tmp.stat().st_mtime > ORPHAN_AGE:
                        _remove(tmp)
                except OSError:
                    continue
        if removed:
            log.info("fetch cache: evicted %s", ", ".join(removed))
        return removed
