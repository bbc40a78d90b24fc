"""One error hierarchy for the service; api.py maps it to HTTP in one place.

Every error carries a message meant for the client: it names the field or item and the problem.
"""

from __future__ import annotations


class ClipServeError(Exception):
    """Base class; `status_code` is the HTTP status the client sees."""

    status_code = 500

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class InvalidInput(ClipServeError):
    """The request is well-formed JSON but an item or option is unusable (bad image, bad URL)."""

    status_code = 400


class UnknownModel(ClipServeError):
    """The request names a model this server does not serve."""

    status_code = 404


class Unauthorized(ClipServeError):
    """Missing or wrong API key."""

    status_code = 401


class PayloadTooLarge(ClipServeError):
    """A body, image or string is over its configured cap."""

    status_code = 413


class Overloaded(ClipServeError):
    """The batch queue is full or the server is draining; the client should retry."""

    status_code = 503

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class UpstreamError(ClipServeError):
    """An image URL could not be fetched (connection refused, HTTP error from the origin)."""

    status_code = 502


class UpstreamTimeout(ClipServeError):
    """An image URL took longer than the fetch timeout."""

    status_code = 504
