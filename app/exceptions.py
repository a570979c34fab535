"""The service's exceptions: one flat list, each mapped to an HTTP status.

The worker and the command line raise the same classes, so a job that fails
records the same readable message the API would have answered.
"""

from __future__ import annotations

from typing import Any


class ServiceError(Exception):
    """Base class: a message a user can act on, plus optional details."""

    status = 500

    def __init__(self, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details

    def to_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {"error": self.message}
        if self.details is not None:
            body["details"] = self.details
        return body


class ValidationError(ServiceError):
    """A request field is missing, malformed or out of range."""

    status = 400


class InvalidFileError(ServiceError):
    """An uploaded or referenced model or dataset cannot be used."""

    status = 422


class UnsafePathError(ServiceError):
    """A path that points outside the data directory."""

    status = 400


class NotFoundError(ServiceError):
    status = 404


class UnauthorizedError(ServiceError):
    status = 401


class ConflictError(ServiceError):
    status = 409


class QuotaExceededError(ServiceError):
    status = 429


class PayloadTooLargeError(ServiceError):
    status = 413


class BackendUnavailableError(ServiceError):
    """Redis cannot be reached; the client may retry."""

    status = 503


class EvaluationError(ServiceError):
    """The evaluation itself failed (bad model output, data problem found while reading)."""

    status = 422


class CanceledError(ServiceError):
    """The job was canceled while it ran."""

    status = 409


class TransferError(ServiceError):
    """A worker on another host could not fetch an input from the API, or send its results back."""

    status = 502
