"""Models with external data: the graph and its data files, gathered into one staged folder.

They arrive as two multipart fields (``file`` the graph, ``external-data`` its data
file(s)) or as one ``.zip`` holding both. Either way they are written to a folder under
``uploads/`` a chunk at a time (never held in memory), counted together against
``MAX_UPLOAD_MB``, then inspected (``inspect_model`` with the uploaded names: every
location must name one of them, every span lie inside it) and stored content-addressed
by ``Storage.commit_bundle``.

A zip is bounded before anything is extracted: a few entries at most, no absolute
paths, no ``..``, no symlinks, no encryption, one ``.onnx`` with its data files beside
it, declared sizes within the limit and compression ratios no bomb reaches; the
extraction counts the bytes it writes again, whatever the headers declared.
"""

from __future__ import annotations

import re
import shutil
import stat
import zipfile
from pathlib import Path, PurePosixPath
from typing import IO, Any

from .exceptions import InvalidFileError, PayloadTooLargeError, ValidationError
from .onnx_inspection import inspect_model
from .storage import BUNDLE_GRAPH, Storage, bundle_sha256, save_stream

MAX_ZIP_ENTRIES = 8
MAX_ZIP_RATIO = 100  # weights compress by ~1.1x; a bomb by 1000x and more
RATIO_FLOOR = 1 << 20  # tiny entries compress oddly either way; the ratio is checked above 1 MiB
DATA_NAME_RE = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,127}")
IGNORED_ZIP_FOLDERS = ("__MACOSX/",)  # macOS resource forks, never part of a model


class Bundle:
    """A staged folder being filled with a graph and its data files, within one byte budget."""

    def __init__(self, storage: Storage, max_bytes: int) -> None:
        self.storage = storage
        self.max_bytes = max_bytes
        self.folder = storage.stage_bundle()
        self.hashes: dict[str, str] = {}
        self.size = 0

    def add(self, name: str | None, stream: IO[bytes], field: str) -> None:
        """Write one file of the bundle: the graph (``name`` None) under ``model.onnx``, a data file under its own name."""
        if name is None:
            name = BUNDLE_GRAPH
        else:
            check_data_name(name, field)
        if name in self.hashes:
            raise ValidationError(f"two data files are named {name!r}", details={"field": field})
        try:
            sha, size = save_stream(stream, self.folder / name, self.max_bytes - self.size)
        except ValueError:
            limit = self.max_bytes // 2**20
            raise PayloadTooLargeError(
                f"the model and its data files are larger than the {limit} MB limit together",
                details={"field": field, "limit-mb": limit},
            ) from None
        self.hashes[name] = sha
        self.size += size

    def finish(self) -> tuple[dict[str, Any], str, int, Path]:
        """Inspect the staged model and store it; returns (inspection, sha256, size, graph path)."""
        if BUNDLE_GRAPH not in self.hashes:
            raise ValidationError("the external data came without its graph: send the .onnx file in the field 'file'")
        if (self.folder / BUNDLE_GRAPH).stat().st_size == 0:
            raise InvalidFileError("the uploaded file is empty")
        data = set(self.hashes) - {BUNDLE_GRAPH}
        info = inspect_model(self.folder / BUNDLE_GRAPH, uploaded=data)
        info["external-data"] = sorted(data)
        sha = bundle_sha256(self.hashes)
        return info, sha, self.size, self.storage.commit_bundle(self.folder, sha)

    def discard(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def check_data_name(name: str, field: str) -> None:
    """A data file is stored under the name its graph references, so only a plain file name will do."""
    if not DATA_NAME_RE.fullmatch(name) or name == BUNDLE_GRAPH:
        raise ValidationError(
            f"data file name {name!r} is not allowed: use a plain file name (letters, digits, '.', '_', '-'), "
            f"not {BUNDLE_GRAPH!r}",
            details={"field": field},
        )


def from_fields(storage: Storage, graph: Any, data: list[Any], max_bytes: int) -> tuple[dict[str, Any], str, int, Path]:
    """A graph (``file``) and its data files (``external-data``), as uploaded by name."""
    bundle = Bundle(storage, max_bytes)
    try:
        bundle.add(None, graph.stream, "file")
        for upload in data:
            bundle.add(upload.filename or "", upload.stream, "external-data")
        return bundle.finish()
    finally:
        bundle.discard()  # a no-op once committed: the folder has moved


def _zip_members(archive: zipfile.ZipFile, max_bytes: int) -> tuple[zipfile.ZipInfo, list[zipfile.ZipInfo]]:
    """The graph's entry and its data files' entries, once every entry passed the bounds."""
    infos = archive.infolist()
    if len(infos) > MAX_ZIP_ENTRIES:
        raise InvalidFileError(f"the zip holds {len(infos)} entries; at most {MAX_ZIP_ENTRIES} are accepted")
    members: list[zipfile.ZipInfo] = []
    for info in infos:
        name = info.filename
        parts = PurePosixPath(name.replace("\\", "/")).parts
        if name.startswith(("/", "\\")) or re.match(r"[A-Za-z]:", name) or ".." in parts:
            raise InvalidFileError(f"zip entry {name!r} has an absolute path or '..'", details={"entry": name})
        if stat.S_ISLNK(info.external_attr >> 16):
            raise InvalidFileError(f"zip entry {name!r} is a symbolic link", details={"entry": name})
        if info.flag_bits & 0x1:
            raise InvalidFileError(f"zip entry {name!r} is encrypted", details={"entry": name})
        if info.is_dir() or name.startswith(IGNORED_ZIP_FOLDERS):
            continue
        if info.file_size > RATIO_FLOOR and info.file_size > MAX_ZIP_RATIO * max(info.compress_size, 1):
            raise InvalidFileError(
                f"zip entry {name!r} expands more than {MAX_ZIP_RATIO} times (a zip bomb?)",
                details={"entry": name, "size": info.file_size, "compressed": info.compress_size},
            )
        members.append(info)
    if sum(i.file_size for i in members) > max_bytes:
        limit = max_bytes // 2**20
        raise PayloadTooLargeError(f"the zip's files are larger than the {limit} MB limit together", details={"limit-mb": limit})
    graphs = [i for i in members if i.filename.lower().endswith(".onnx")]
    if len(graphs) != 1:
        names = [i.filename for i in graphs]
        raise InvalidFileError(f"the zip must hold exactly one .onnx file, it holds {len(graphs)}", details={"onnx": names})
    folder = PurePosixPath(graphs[0].filename).parent
    for info in members:
        if PurePosixPath(info.filename).parent != folder:
            raise InvalidFileError(f"zip entry {info.filename!r} is not beside the graph {graphs[0].filename!r}")
    return graphs[0], [i for i in members if i is not graphs[0]]


def from_zip(storage: Storage, upload: Any, max_bytes: int) -> tuple[dict[str, Any], str, int, Path]:
    """A ``.zip`` holding one ``.onnx`` and its data files, streamed to disk and then extracted entry by entry."""
    tmp, _, _ = storage.save_upload(upload.stream, ".zip", max_bytes)
    bundle = Bundle(storage, max_bytes)
    try:
        try:
            archive = zipfile.ZipFile(tmp)
        except (zipfile.BadZipFile, OSError):
            raise InvalidFileError("not a readable zip file") from None
        with archive:
            graph, data = _zip_members(archive, max_bytes)
            try:
                for info in [graph, *data]:
                    name = None if info is graph else PurePosixPath(info.filename).name
                    with archive.open(info) as src:
                        bundle.add(name, src, "file")
            except (zipfile.BadZipFile, NotImplementedError, EOFError) as exc:  # bad CRC, unknown compression
                raise InvalidFileError(f"cannot extract the zip: {exc}") from None
        return bundle.finish()
    finally:
        bundle.discard()
        tmp.unlink(missing_ok=True)
