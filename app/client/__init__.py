"""The API's Python client (``session``), its errors (``errors``) and the remote command line (``cli``).

from app.client import Client, JobFailed
c = Client("http://127.0.0.1:8000", api_key="...")
"""

from __future__ import annotations

from .errors import ApiError, JobFailed, TimedOut, Unreachable
from .session import PENDING, Client, retry_after

__all__ = ["PENDING", "ApiError", "Client", "JobFailed", "TimedOut", "Unreachable", "retry_after"]
