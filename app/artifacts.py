"""A job's artifacts as one tar: what a worker on another host sends back to the API (no torch).

Everything the API later serves from a job's folder (``Storage.job_dir``) is here: the per-sample
file (``samples.npz``, which the merge of a sharded evaluation also reads) and the inspection
(``inspection/index.json`` and its PNGs, see ``app.samples``). Checkpoints are not: they stay on
the worker that wrote them (a job resumed on another host restarts its unfinished part).

The reader trusts nothing in the archive, whoever sent it: every member must be a regular file
whose name is one of the names above (matched whole, so no ``..``, no absolute path, no other
folder), listed once, within a count and a byte bound. A link, a device, a folder or an extended
(pax or GNU) header is refused from its header block, before any of its payload is read. Files
are written into a fresh staging folder and moved into place only when the whole archive passed.
"""

from __future__ import annotations

import os
import re
import shutil
import tarfile
import tempfile
from pathlib import Path
from typing import IO

from . import samples
from .exceptions import PayloadTooLargeError, ValidationError

SAMPLES_FILE = "samples.npz"  # app.engine.evaluation.SAMPLES (the engine imports torch, so not imported here)
NAME_RE = re.compile(
    rf"{re.escape(SAMPLES_FILE)}|{samples.INSPECTION}/{re.escape(samples.INDEX)}"
    rf"|{samples.INSPECTION}/(?:{samples.SAMPLE_RE.pattern})/(?:{samples.IMAGE_RE.pattern})\.png"
)
# Every name NAME_RE admits: two files, and per inspected sample two images plus three per epsilon index 1..99.
MAX_FILES = 2 + samples.MAX_SAMPLES * (2 + 3 * 99)
CHUNK = 1 << 20


class ArtifactError(ValidationError):
    """A member of an artifact archive that is not one of a job's artifacts."""


class _HeaderChecked(tarfile.TarInfo):
    """A member refused from its header block alone: only plain regular files go on to be read."""

    @classmethod
    def fromtarfile(cls, tar: tarfile.TarFile) -> tarfile.TarInfo:
        buf = tar.fileobj.read(tarfile.BLOCKSIZE)
        info = cls.frombuf(buf, tar.encoding, tar.errors)  # an empty block ends the archive (EOFHeaderError)
        if info.type not in (tarfile.REGTYPE, tarfile.AREGTYPE):
            kind = {tarfile.SYMTYPE: "a symbolic link", tarfile.LNKTYPE: "a hard link", tarfile.DIRTYPE: "a folder"}
            what = kind.get(info.type, f"not a regular file (type {info.type!r})")
            raise ArtifactError(f"artifact {info.name[:120]!r} is {what}", details={"member": info.name[:120]})
        info.offset = tar.fileobj.tell() - tarfile.BLOCKSIZE
        return info._proc_member(tar)  # tarfile's own bookkeeping of a regular member (data offset)


def names(job_dir: Path) -> list[str]:
    """The artifacts present in ``job_dir``: regular files only, by the names :data:`NAME_RE` admits."""
    found = []
    candidates = [job_dir / SAMPLES_FILE, job_dir / samples.INSPECTION / samples.INDEX]
    inspection = job_dir / samples.INSPECTION
    if inspection.is_dir() and not inspection.is_symlink():
        candidates += sorted(p for folder in inspection.iterdir() if folder.is_dir() for p in folder.iterdir())
    for path in candidates:
        name = path.relative_to(job_dir).as_posix()
        if NAME_RE.fullmatch(name) and path.is_file() and not path.is_symlink():
            found.append(name)
    return found


def pack(job_dir: Path, out: IO[bytes]) -> int:
    """Write ``job_dir``'s artifacts to ``out`` as a plain (ustar) tar; returns how many."""
    listed = names(job_dir)
    with tarfile.open(fileobj=out, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in listed:
            info = tar.gettarinfo(str(job_dir / name), arcname=name)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            with open(job_dir / name, "rb") as fh:
                tar.addfile(info, fh)
    return len(listed)


def unpack(stream: IO[bytes], stage: Path, max_bytes: int) -> list[str]:
    """Read an artifact tar from ``stream`` into the empty folder ``stage``; returns the names written.

    Raises :class:`ArtifactError` (400) for a member that is not an artifact, and
    :class:`PayloadTooLargeError` (413) past ``MAX_FILES`` files or ``max_bytes`` bytes."""
    written: list[str] = []
    total = 0
    try:
        with tarfile.open(fileobj=stream, mode="r|", tarinfo=_HeaderChecked) as tar:
            for info in tar:
                if not NAME_RE.fullmatch(info.name):
                    raise ArtifactError(
                        f"artifact {info.name[:120]!r} is not one of a job's artifacts "
                        "(samples.npz, inspection/index.json, inspection/<sample>/<image>.png)",
                        details={"member": info.name[:120]},
                    )
                if len(written) >= MAX_FILES or total + info.size > max_bytes:
                    raise PayloadTooLargeError(
                        f"the artifacts are over the limit of {MAX_FILES} files and {max_bytes} bytes",
                        details={"limit-files": MAX_FILES, "limit-bytes": max_bytes},
                    )
                dest = stage / info.name
                dest.parent.mkdir(parents=True, exist_ok=True)
                src = tar.extractfile(info)
                try:
                    with open(dest, "xb") as out:  # "x": a name sent twice is refused, never overwritten
                        shutil.copyfileobj(src, out, CHUNK)
                except FileExistsError:
                    raise ArtifactError(f"artifact {info.name!r} is sent twice", details={"member": info.name}) from None
                total += info.size
                written.append(info.name)
    except tarfile.TarError as exc:
        raise ValidationError(f"the artifacts are not a readable tar: {exc}", details={"problem": "archive"}) from None
    return written


def commit(stage: Path, job_dir: Path) -> None:
    """Put the artifacts unpacked in ``stage`` in place in ``job_dir``: they replace the previous set
    whole (an artifact the new set lacks is dropped), the inspection folder in one rename."""
    job_dir.mkdir(parents=True, exist_ok=True)
    if (stage / SAMPLES_FILE).is_file():
        os.replace(stage / SAMPLES_FILE, job_dir / SAMPLES_FILE)
    else:
        (job_dir / SAMPLES_FILE).unlink(missing_ok=True)
    if (stage / samples.INSPECTION).is_dir():
        samples.replace_folder(stage / samples.INSPECTION, job_dir / samples.INSPECTION)
    else:
        shutil.rmtree(job_dir / samples.INSPECTION, ignore_errors=True)


def receive(stream: IO[bytes], job_dir: Path, max_bytes: int, still_owned) -> list[str]:
    """Unpack an archive into a staging folder beside ``job_dir`` and commit it there, if
    ``still_owned()`` says so right before; returns the names, or raises. Nothing is left behind."""
    job_dir.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(dir=job_dir.parent, prefix=f".{job_dir.name}.artifacts-"))
    try:
        written = unpack(stream, stage, max_bytes)
        if not still_owned():
            return []
        commit(stage, job_dir)
        return written
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def extract_to(stream: IO[bytes], job_dir: Path, max_bytes: int) -> list[str]:
    """The worker's side of the same check: a job's artifacts fetched from the API, put in ``job_dir``."""
    return receive(stream, job_dir, max_bytes, lambda: True)
