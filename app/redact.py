"""What a user may be told about a failure: no server paths, no tracebacks, bounded length.

Every error recorded on a job passes through ``scrub`` (the worker's log keeps the
full traceback). Paths inside the data directory become the names a request uses
(``files/val.h5``); any other absolute path becomes ``<path>``.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

MAX_MESSAGE = 1000
MAX_DETAILS_ITEMS = 50

# An absolute POSIX path: a "/" not glued to a word, a URL scheme or another path.
_ABSOLUTE = re.compile(r"(?<![\w/.:~-])/[^\s'\"`,;()<>\[\]{}|]+")
_TRACEBACK = re.compile(r"Traceback \(most recent call last\):.*", re.DOTALL)
_FRAME = re.compile(r'^\s*File "[^"]*", line \d+.*$', re.MULTILINE)


def scrub(text: str, root: Path | None = None, limit: int = MAX_MESSAGE) -> str:
    """``text`` with data-directory paths made relative, other absolute paths hidden,
    traceback text dropped, and at most ``limit`` characters."""
    text = _FRAME.sub("", _TRACEBACK.sub("", str(text)))
    if root is not None:
        for prefix in sorted({str(Path(root)), str(Path(root).resolve())}, key=len, reverse=True):
            text = text.replace(prefix + "/", "").replace(prefix, "<data directory>")
    text = _ABSOLUTE.sub("<path>", text)
    text = re.sub(r"\n\s*\n+", "\n", text).strip()
    return text if len(text) <= limit else text[: limit - 3] + "..."


def scrub_details(value: Any, root: Path | None = None, depth: int = 0) -> Any:
    """JSON-able ``details`` with every string scrubbed; a ``traceback`` entry is dropped."""
    if depth > 4:
        return None
    if isinstance(value, str):
        return scrub(value, root)
    if isinstance(value, dict):
        return {
            str(k)[:100]: scrub_details(v, root, depth + 1)
            for k, v in list(value.items())[:MAX_DETAILS_ITEMS]
            if str(k) != "traceback"
        }
    if isinstance(value, (list, tuple)):
        return [scrub_details(v, root, depth + 1) for v in value[:MAX_DETAILS_ITEMS]]
    if value is None or isinstance(value, (bool, int, float)):
        return value
    return scrub(repr(value), root)
