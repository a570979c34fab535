"""Pages over a per-tenant index: a Redis sorted set of ids scored by creation time.

A page costs the same however many other entries Redis holds: it reads one tenant's
index from a cursor (``ZRANK`` then ``ZRANGE``, both O(log N + page)) and never scans
anything shared. The cursor is opaque to clients: the score and id of the last entry
seen, so deleting entries between pages neither repeats nor skips the others.
"""

from __future__ import annotations

import base64
import binascii
import bisect
import math
import re
from dataclasses import dataclass

import redis

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_CURSOR_CHARS = 200
MAX_TIED = 10_000  # entries sharing one creation millisecond read to place a deleted cursor


@dataclass(frozen=True)
class Cursor:
    """The last index entry a page showed; the next page starts after it."""

    score: float
    member: str

    def encode(self) -> str:
        raw = f"{self.score!r}|{self.member}".encode()
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str, member_re: re.Pattern[str]) -> Cursor:
        """Parse a cursor this service issued; ``ValueError`` for anything else."""
        if not text or len(text) > MAX_CURSOR_CHARS or not re.fullmatch(r"[A-Za-z0-9_-]+", text):
            raise ValueError("not a cursor")
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)).decode()
        except (binascii.Error, UnicodeDecodeError):
            raise ValueError("not a cursor") from None
        score_text, sep, member = raw.partition("|")
        try:
            score = float(score_text)
        except ValueError:
            raise ValueError("not a cursor") from None
        if not sep or not math.isfinite(score) or not member_re.fullmatch(member):
            raise ValueError("not a cursor")
        return cls(score, member)


def parse_limit(raw: str | None) -> int:
    """The ``limit`` query parameter: an integer from 1 to ``MAX_LIMIT``; ``ValueError`` otherwise."""
    if raw is None:
        return DEFAULT_LIMIT
    if not re.fullmatch(r"[0-9]{1,7}", raw.strip()):
        raise ValueError(f"must be an integer from 1 to {MAX_LIMIT}")
    value = int(raw)
    if not 1 <= value <= MAX_LIMIT:
        raise ValueError(f"must be an integer from 1 to {MAX_LIMIT}")
    return value


def walk(conn: redis.Redis, index: str, after: Cursor | None, count: int) -> list[tuple[str, float]]:
    """Up to ``count`` (id, score) entries of ``index`` after the cursor, oldest first."""
    if count <= 0:
        return []
    start = 0
    if after is not None:
        rank = conn.zrank(index, after.member)
        if rank is None:
            # The cursor's entry was deleted: find where it stood among the entries of its score
            # (equal scores are ordered by id), so none created in the same millisecond is skipped.
            below = conn.zcount(index, "-inf", f"({after.score!r}")
            tied = conn.zrangebyscore(index, after.score, after.score, start=0, num=MAX_TIED)
            rank = below + bisect.bisect_left(tied, after.member.encode()) - 1
        start = rank + 1
    return [(m.decode(), s) for m, s in conn.zrange(index, start, start + count - 1, withscores=True)]


def page(conn: redis.Redis, index: str, after: Cursor | None, limit: int) -> tuple[list[str], Cursor | None]:
    """The ids of one page and the cursor of the next (None when nothing remains)."""
    entries = walk(conn, index, after, limit + 1)
    more = len(entries) > limit
    entries = entries[:limit]
    return [m for m, _ in entries], (Cursor(entries[-1][1], entries[-1][0]) if more else None)
