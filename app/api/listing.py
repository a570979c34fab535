"""Paginated list answers: the ``limit`` and ``cursor`` query parameters and the ``next`` link."""

from __future__ import annotations

import re
from typing import Any

from flask import request, url_for

from ..exceptions import ValidationError
from ..paging import Cursor, parse_limit

PASSED_ON = ("limit", "status", "include")  # query parameters the next page's URL repeats


def page_args(member_re: re.Pattern[str]) -> tuple[int, Cursor | None]:
    """``limit`` (1 to 1000, default 100) and ``cursor`` (from a previous answer), or a 400."""
    try:
        limit = parse_limit(request.args.get("limit"))
    except ValueError as exc:
        raise ValidationError(f"limit: {exc}", details={"field": "limit"}) from None
    raw = request.args.get("cursor")
    if raw is None:
        return limit, None
    try:
        return limit, Cursor.decode(raw, member_re)
    except ValueError:
        raise ValidationError(
            "cursor: not a cursor from this list; pass the 'next-cursor' of a previous answer", details={"field": "cursor"}
        ) from None


def page_body(name: str, items: list[dict[str, Any]], cursor: Cursor | None) -> dict[str, Any]:
    """The answer: the items, their count, and when more remain the next cursor and its URL."""
    body: dict[str, Any] = {name: items, "count": len(items)}
    if cursor is not None:
        token = cursor.encode()
        args = {k: v for k, v in request.args.items() if k in PASSED_ON}
        body["next-cursor"] = token
        body["links"] = {"next": url_for(request.endpoint, **(request.view_args or {}), **args, cursor=token, _external=True)}
    return body
