"""The operator's own error types: what failed, and whether retrying the same spec can help."""

from __future__ import annotations

# HTTP statuses worth retrying: conflicts, throttling, and the API server's own trouble.
_TRANSIENT = {409, 429, 500, 502, 503, 504}


class ApiError(Exception):
    """An API call failed; `status` is the HTTP status (0 when no response came)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status

    @property
    def namespace_terminating(self) -> bool:
        """True when the namespace is being deleted: nothing new can be created there."""
        return self.status == 403 and "is being terminated" in str(self)

    @property
    def transient(self) -> bool:
        """True when retrying the same call can succeed."""
        return self.status == 0 or self.status in _TRANSIENT


class ReconcileError(Exception):
    """A reconcile step failed for good: it waits for the next change of the ClipService."""


class TransientError(ReconcileError):
    """A reconcile step failed in a way the same call can get past: retried after `delay` s."""

    def __init__(self, message: str, delay: float) -> None:
        super().__init__(message)
        self.delay = delay
