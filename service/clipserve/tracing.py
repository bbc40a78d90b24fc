"""Tracing: OpenTelemetry spans when the standard OTEL_* variables ask for them, else nothing.

The rooms call this one small interface, `Tracing`, so their code reads the same either way.
Off (the default: no OTLP endpoint set) every method returns at once, nothing per request is
recorded, the request middleware is not even installed, and opentelemetry is never imported:
`clipserve.otel` holds everything that imports it, and `clipserve.tracing_config` loads it only
when an endpoint is configured.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Mapping, Sequence
from contextlib import AbstractContextManager
from typing import Any, Protocol


class RequestSpan(Protocol):
    """The span of one HTTP request, told the status its client got."""

    def respond(self, status: int) -> None: ...


class Traced(Protocol):
    """A queued item as the batch span sees it: its request's context and when it queued."""

    @property
    def trace(self) -> object | None: ...  # Tracing.capture() at submit; None when off

    @property
    def enqueued(self) -> float: ...  # time.monotonic()


class _NoSpan:
    def respond(self, status: int) -> None:
        pass


_NULL: AbstractContextManager[None] = contextlib.nullcontext()
_NULL_REQUEST: AbstractContextManager[RequestSpan] = contextlib.nullcontext(_NoSpan())


class Tracing:
    """No tracing: every method returns at once (clipserve.otel's `OtelTracing` records)."""

    enabled = False

    def request(
        self, method: str, route: str, headers: Iterable[tuple[bytes, bytes]]
    ) -> AbstractContextManager[RequestSpan]:
        """The server span of a request, a child of the caller's (`traceparent`), current
        inside the block."""
        return _NULL_REQUEST

    def span(
        self, name: str, attributes: Mapping[str, Any] | None = None, parent: object = None
    ) -> AbstractContextManager[None]:
        """A span around the block, a child of `parent` (from `capture`, for work another
        thread does) or of the current span."""
        return _NULL

    def capture(self) -> object | None:
        """The current context, to parent or link work done elsewhere (None when off)."""
        return None

    def batch(
        self, name: str, items: Sequence[Traced], attributes: Mapping[str, Any]
    ) -> AbstractContextManager[None]:
        """A batch's forward pass: each request's queue wait (enqueued until now) as a span in
        its trace, and one span around the block, linked to every request in the batch."""
        return _NULL

    def shutdown(self) -> None:
        """Export what is left (blocking)."""


OFF = Tracing()
