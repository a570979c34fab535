"""What the client raises: an HTTP error answer, a job that ended without a curve, a deadline
passed, a service that cannot be reached. The last two are ``OSError``s (``TimeoutError``,
``ConnectionError``), so code that already treats network trouble as ``OSError`` keeps working."""

from __future__ import annotations

from typing import Any


class ApiError(Exception):
    """The API answered an error status; ``body`` is its decoded JSON (``{"error", "details"}``)
    or its text when it was not JSON."""

    def __init__(self, status: int, body: Any) -> None:
        super().__init__(f"HTTP {status}: {body}")
        self.status, self.body = status, body

    @property
    def message(self) -> str:
        """The API's own sentence (its ``error`` field), else the whole body as text."""
        if isinstance(self.body, dict) and isinstance(self.body.get("error"), str):
            return self.body["error"]
        return str(self.body)

    @property
    def details(self) -> Any:
        return self.body.get("details") if isinstance(self.body, dict) else None


class JobFailed(ApiError):
    """A job ended ``failed`` or ``canceled``; ``record`` is its status record (``error`` says why)."""

    def __init__(self, record: dict[str, Any]) -> None:
        super().__init__(422, record)
        self.record = record

    @property
    def message(self) -> str:
        why = self.record.get("error") or "no reason recorded"
        return f"evaluation {self.record.get('job_id')} {self.record.get('job-status')}: {why}"


class TimedOut(TimeoutError):
    """A deadline passed: a request's own timeout, or waiting for a job or an upload's checks."""


class Unreachable(ConnectionError):
    """The service could not be reached (refused, reset, DNS), after the retries allowed."""
