"""Where files live under the data directory, and which paths are allowed.

Layout under ``APPDATA`` (``appdata/`` by default)::

    blobs/<sha256[:2]>/<sha256>.<ext>   uploaded models and datasets, content-addressed
    blobs/<sha256[:2]>/<sha256>/        a model with external data: ``model.onnx`` and its data files
    evaluations/<job id>/               per-job artifacts (per-sample results, checkpoints)
    uploads/                            partial uploads, renamed into blobs/ once validated
    redis/                              the embedded Redis's append-only files (demo only)
    files/                              files requests may name (``files/<tenant folder>/`` with API keys)

Files named in requests are resolved here and nowhere else, so that no other module
can be tricked into opening a path outside ``files/`` (or outside the tenant's own
folder under it): never a blob, a checkpoint, a partial upload or Redis's files.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
import uuid
from pathlib import Path
from typing import IO, Any

from .config import PUBLIC
from .exceptions import InvalidFileError, UnsafePathError

CHUNK = 1 << 20
FILES = "files"
SERVICE_DIRS = ("blobs", "evaluations", "uploads", "redis")
BLOB_RE = re.compile(r"blobs/([0-9a-f]{2})/\1[0-9a-f]{62}(\.[a-z0-9]{1,8}|/model\.onnx)")
BUNDLE_GRAPH = "model.onnx"  # the graph's name inside a stored bundle; its data files keep their own names
SAFE_FOLDER_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}")


def tenant_folder(tenant: str) -> str:
    """The folder under ``files/`` that holds a tenant's named files.

    A plain lower-case name is used as is; anything else (dots, slashes, capitals that a
    case-insensitive disk would fold) becomes ``_`` plus a hash, which no plain name can equal.
    """
    if SAFE_FOLDER_RE.fullmatch(tenant):
        return tenant
    return "_" + hashlib.sha256(tenant.encode()).hexdigest()[:24]


def file_scope(owner: str, keys_configured: bool) -> str | None:
    """Whose folder a named file must lie in: None for an open service (all of ``files/``).

    The API and the worker both decide with this, so the worker re-checks a job's files
    exactly as the submit did (an owner other than ``public`` only exists with keys).
    """
    return None if owner == PUBLIC and not keys_configured else owner


class Storage:
    """Files under one data directory."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root).resolve()

    def ensure(self) -> None:
        for sub in ("blobs", "evaluations", "uploads", FILES):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    # -- uploads -------------------------------------------------------------
    def save_upload(self, stream: IO[bytes], suffix: str, max_bytes: int) -> tuple[Path, str, int]:
        """Stream an upload to a temporary file, hashing it; returns (path, sha256, size).

        Raises ``ValueError`` once more than ``max_bytes`` arrive, deleting what was written.
        """
        self.ensure()
        fd, tmp = tempfile.mkstemp(dir=self.root / "uploads", suffix=suffix)
        os.close(fd)
        sha256, size = save_stream(stream, Path(tmp), max_bytes)
        return Path(tmp), sha256, size

    def stage_bundle(self) -> Path:
        """A fresh folder under ``uploads/`` where a model and its data files are gathered."""
        self.ensure()
        return Path(tempfile.mkdtemp(dir=self.root / "uploads", prefix="bundle-"))

    def commit_bundle(self, staged: Path, sha256: str) -> Path:
        """Move a validated bundle folder to its content address; returns its graph's path.

        Idempotent for equal content: a bundle already stored (or stored by a concurrent
        upload between the check and the rename) wins and the staged copy is dropped.
        """
        dest = self.root / "blobs" / sha256[:2] / sha256
        dest.parent.mkdir(parents=True, exist_ok=True)
        try:
            if dest.exists():
                raise FileExistsError(dest)
            os.rename(staged, dest)
        except OSError:
            if not (dest / BUNDLE_GRAPH).is_file():
                raise
            shutil.rmtree(staged, ignore_errors=True)
        return dest / BUNDLE_GRAPH

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

    def resolve_blob(self, rel: str) -> Path:
        """The path of a stored upload, from its record (``blobs/ab/ab….onnx``); nothing else."""
        if not isinstance(rel, str) or not BLOB_RE.fullmatch(rel):
            raise UnsafePathError("not a stored upload's path")
        return self.root / rel

    # -- files named in requests ---------------------------------------------
    def files_dir(self, scope: str | None) -> Path:
        """Where named files may lie: ``files/`` (open service) or ``files/<tenant folder>/``.

        Not resolved on purpose: a tenant folder that is itself a symlink (to another
        tenant's folder, to ``blobs/``) leads outside it and is refused.
        """
        base = self.root / FILES
        return base if scope is None else base / tenant_folder(scope)

    def resolve_named_file(self, name: str, scope: str | None) -> Path:
        """A file named relative to the data directory, which after following symlinks must lie
        inside ``files_dir(scope)`` and in none of the service's own folders.

        Absolute paths and ``..`` components are refused outright.
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
        allowed = self.files_dir(scope)
        inside_service = any(resolved.is_relative_to(self.root / sub) for sub in SERVICE_DIRS)
        if inside_service or not resolved.is_relative_to(allowed) or resolved == allowed:
            where = allowed.relative_to(self.root).as_posix()
            raise UnsafePathError(
                f"{name!r} is not a file inside {where}/: files named in requests must lie there "
                "(or upload the file and pass its id)",
                details={"allowed": f"{where}/"},
            )
        return resolved

    def job_input(self, ref: dict[str, Any], scope: str | None, named_files: bool = True, what: str = "file") -> Path:
        """The file a stored job reads: its upload's blob, or its named file checked again with
        the submit's confinement, so that a symlink swapped since cannot lead to a blob."""
        kind = ref.get("kind") or ("upload" if ref.get("sha256") else "file")  # records from before "kind"
        if kind == "upload":
            path = self.resolve_blob(ref["path"])
        elif not named_files:
            raise UnsafePathError("file references are disabled on this service (FILE_REFERENCES=off)")
        else:
            path = self.resolve_named_file(ref["path"], scope)
        if not path.is_file():  # deleted or replaced since the submit: say which, by the name the user gave
            name = f"the uploaded file {ref.get('id')}" if kind == "upload" else ref["path"]
            raise InvalidFileError(f"cannot read the {what}: {name} no longer exists")
        return path

    # -- per-job artifacts ---------------------------------------------------
    def job_dir(self, job_id: str) -> Path:
        uuid.UUID(job_id)  # job ids are UUIDs; anything else must never become a path
        return self.root / "evaluations" / job_id

    def remove_job_dir(self, job_id: str) -> None:
        shutil.rmtree(self.job_dir(job_id), ignore_errors=True)


def save_stream(stream: IO[bytes], path: Path, max_bytes: int) -> tuple[str, int]:
    """Copy a stream to ``path`` a chunk at a time, hashing it; returns (sha256, size).

    Raises ``ValueError`` once more than ``max_bytes`` arrive, deleting what was written.
    """
    digest = hashlib.sha256()
    size = 0
    try:
        with open(path, "wb") as out:
            while chunk := stream.read(CHUNK):
                size += len(chunk)
                if size > max_bytes:
                    raise ValueError(f"file is larger than the {max_bytes // 2**20} MB limit")
                digest.update(chunk)
                out.write(chunk)
    except BaseException:
        path.unlink(missing_ok=True)
        raise
    return digest.hexdigest(), size


def bundle_sha256(files: dict[str, str]) -> str:
    """The content address of a bundle: a hash over each file's name and hash (``sha256sum``'s format),
    so that equal graphs with different weights, or renamed data files, never share a folder."""
    manifest = "".join(f"{sha}  {name}\n" for name, sha in sorted(files.items()))
    return hashlib.sha256(manifest.encode()).hexdigest()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while chunk := fh.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()
