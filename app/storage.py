"""Where files live under the data directory, and which paths are allowed.

Layout under ``APPDATA`` (``appdata/`` by default)::

    blobs/<sha256[:2]>/<sha256>.<ext>   uploaded models and datasets, content-addressed
    evaluations/<job id>/               per-job artifacts (per-sample results, checkpoints)
    uploads/                            partial uploads, renamed into blobs/ once validated
    redis/                              the embedded Redis's append-only files (demo only)

User-named files ("a file name inside the data directory") are resolved here and
nowhere else, so that no other module can be tricked into opening a path outside.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import IO

from .exceptions import UnsafePathError

CHUNK = 1 << 20


class Storage:
    """Files under one data directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    def ensure(self) -> None:
        for sub in ("blobs", "evaluations", "uploads"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    # -- uploads -------------------------------------------------------------
    def save_upload(self, stream: IO[bytes], suffix: str, max_bytes: int) -> tuple[Path, str, int]:
        """Stream an upload to a temporary file, hashing it; returns (path, sha256, size).

        Raises ``ValueError`` once more than ``max_bytes`` arrive, deleting what was written.
        """
        self.ensure()
        digest = hashlib.sha256()
        size = 0
        fd, tmp = tempfile.mkstemp(dir=self.root / "uploads", suffix=suffix)
        try:
            with os.fdopen(fd, "wb") as out:
                while chunk := stream.read(CHUNK):
                    size += len(chunk)
                    if size > max_bytes:
                        raise ValueError(f"file is larger than the {max_bytes // 2**20} MB limit")
                    digest.update(chunk)
                    out.write(chunk)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        return Path(tmp), digest.hexdigest(), size

    def commit_upload(self, tmp: Path, sha256: str, suffix: str) -> Path:
        """Move a validated upload to its content address (idempotent for equal content)."""
        dest = self.blob_path(sha256, suffix)
        dest.parent.mkdir(parents=True, exist_ok=True)
        if dest.exists():
            tmp.unlink(missing_ok=True)
        else:
            os.replace(tmp, dest)
        return dest

    def blob_path(self, sha256: str, suffix: str) -> Path:
        return self.root / "blobs" / sha256[:2] / f"{sha256}{suffix}"

    # -- user-named files ----------------------------------------------------
    def resolve_user_path(self, name: str) -> Path:
        """A file named relative to the data directory, refusing anything that escapes it.

        Absolute paths and ``..`` components are refused outright; a symlink is
        followed and refused if its target lies outside the data directory.
        """
        if not name or "\x00" in name:
            raise UnsafePathError("file name is empty or contains a NUL byte")
        candidate = Path(name)
        if candidate.is_absolute() or name.startswith(("/", "\\", "~")):
            raise UnsafePathError(f"absolute paths are not allowed: {name!r}")
        if ".." in candidate.parts or ".." in name.replace("\\", "/").split("/"):
            raise UnsafePathError(f"'..' is not allowed in file names: {name!r}")
        resolved = (self.root / candidate).resolve()
        if not resolved.is_relative_to(self.root):
            raise UnsafePathError(f"{name!r} leads outside the data directory")
        return resolved

    # -- per-job artifacts ---------------------------------------------------
    def job_dir(self, job_id: str) -> Path:
        uuid.UUID(job_id)  # job ids are UUIDs; anything else must never become a path
        return self.root / "evaluations" / job_id

    def remove_job_dir(self, job_id: str) -> None:
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
