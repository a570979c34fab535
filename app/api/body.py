"""Request bodies: the strict JSON reader behind every JSON endpoint, and the small body limit.

Python's ``json`` accepts more than RFC 8259 JSON: NaN and Infinity literals,
duplicate keys (the last one wins silently), floats that overflow to ``inf``,
and integer literals too long to convert (a ``ValueError`` from the int-parsing
limit). Each of those is answered here with a 400 that names the problem, before
any field is looked at. The size limit is applied before a byte is parsed: the
``before_request`` hook sets the request's own ``max_content_length``, so an
over-long body, with or without ``Content-Length``, is a 413 while it streams.
"""

from __future__ import annotations

import json
from typing import Any

from flask import current_app, request

from ..exceptions import ValidationError
from ..extensions import get_settings

MAX_DEPTH = 16
MAX_INT_DIGITS = 20  # every integer field fits in 64 bits; longer literals are refused before int()
UPLOAD_ENDPOINTS = ("files.upload",)
JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean", type(None): "null"}


def limit_body() -> None:
    """``before_request`` hook: every endpoint but the uploads gets the small JSON body limit."""
    if request.endpoint not in UPLOAD_ENDPOINTS:
        request.max_content_length = get_settings().max_json_kb * 1024


def too_large() -> dict[str, Any]:
    """The JSON error for a 413, naming the limit that applies to this endpoint."""
    if request.endpoint in UPLOAD_ENDPOINTS:
        limit_mb = get_settings().max_upload_mb
        sent = request.content_length
        if sent is not None and sent <= limit_mb * 1024 * 1024:  # not the file: the form around it
            parts, text = current_app.config["MAX_FORM_PARTS"], current_app.config["MAX_FORM_MEMORY_SIZE"]
            return {
                "error": f"upload refused: at most {parts} multipart parts, and no text part over {text // 1024} KiB; "
                "send the file as the one part 'file'",
                "details": {"max-parts": parts, "max-text-part-bytes": text},
            }
        return {
            "error": f"upload too large: a file of at most {limit_mb} MB, sent as the one multipart part 'file'",
            "details": {"limit-mb": limit_mb},
        }
    limit = request.max_content_length
    return {"error": f"request body too large: at most {limit} bytes here", "details": {"limit-bytes": limit}}


def _refuse_constant(name: str) -> Any:
    raise ValidationError(f"request body: {name} is not valid JSON (numbers must be finite)", details={"problem": name})


def _finite_float(text: str) -> float:
    value = float(text)
    if value in (float("inf"), float("-inf")):
        raise ValidationError(f"request body: the number {text[:40]} is out of range", details={"problem": "number too large"})
    return value


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        raise ValidationError(
            f"request body: an integer of {len(text.lstrip('-'))} digits is too large (at most {MAX_INT_DIGITS})",
            details={"problem": "number too large"},
        )
    return int(text)


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        dup = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValidationError(f"request body: duplicate key {dup[:80]!r}", details={"problem": "duplicate key", "key": dup[:80]})
    return obj


def _depth(value: Any) -> int:
    """Nesting depth, iteratively (the body is small, so this is cheap)."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return deepest


def parse_json(raw: bytes) -> Any:
    """Strict RFC 8259 JSON from bytes, or a ``ValidationError`` naming what is wrong."""
    if not raw.strip():
        raise ValidationError("request body is empty; expected a JSON object")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValidationError(
            f"request body is not valid UTF-8 (byte {exc.start})", details={"problem": "encoding", "offset": exc.start}
        ) from None
    try:
        value = json.loads(
            text,
            parse_constant=_refuse_constant,
            parse_float=_finite_float,
            parse_int=_bounded_int,
            object_pairs_hook=_unique_keys,
        )
    except json.JSONDecodeError as exc:
        raise ValidationError(
            f"request body is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})",
            details={"problem": "syntax", "offset": exc.pos},
        ) from None
    except RecursionError:
        raise ValidationError(
            f"request body is nested too deeply (at most {MAX_DEPTH} levels)", details={"problem": "nesting"}
        ) from None
    if _depth(value) > MAX_DEPTH:
        raise ValidationError(f"request body is nested too deeply (at most {MAX_DEPTH} levels)", details={"problem": "nesting"})
    return value


def json_object() -> dict[str, Any]:
    """The request's body as a JSON object (the size limit was applied by :func:`limit_body`)."""
    if not request.is_json:
        raise ValidationError("request body must be JSON (Content-Type: application/json)")
    raw = request.get_data(cache=False)
    limit = request.max_content_length
    if limit is not None and len(raw) >= limit:
        # Without Content-Length, werkzeug's reader stops quietly at the maximum; one more
        # read raises the 413 if the client sent more, instead of parsing a truncated body.
        request.stream.read(1)
    value = parse_json(raw)
    if not isinstance(value, dict):
        raise ValidationError(f"request body must be a JSON object, got {JSON_TYPES[type(value)]}", details={"problem": "type"})
    return value
