"""The OpenTelemetry SDK behind `clipserve.tracing`: the only module that imports it, loaded
only when an OTLP endpoint is configured (tracing.from_env).

The SDK reads its own OTEL_* variables (endpoint, headers, sampler, resource, export delay);
tracing.check has already refused the ones it would ignore with a warning. The provider is this
app's own, not the global one: nothing else in the process traces through it.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.context import Context
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.propagators.textmap import Getter
from opentelemetry.sdk.resources import SERVICE_NAME, SERVICE_VERSION, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.trace import Link, SpanKind, Status, StatusCode

from clipserve import __version__
from clipserve.tracing import RequestSpan, Traced, Tracing

Headers = Iterable[tuple[bytes, bytes]]
# Longest the last export may hold up the exit: an unreachable collector (the exporter retries
# for up to OTEL_EXPORTER_OTLP_TIMEOUT, 10 s) must not eat a pod's termination grace period.
SHUTDOWN_S = 3.0
log = logging.getLogger(__name__)


class _AsgiHeaders(Getter[Headers]):
    """The propagator's view of ASGI headers (lower-case latin-1 bytes pairs)."""

    def get(self, carrier: Headers, key: str) -> list[str] | None:
        name = key.lower().encode("latin-1")
        found = [v.decode("latin-1") for k, v in carrier if k == name]
        return found or None

    def keys(self, carrier: Headers) -> list[str]:
        return [k.decode("latin-1") for k, _ in carrier]


_GETTER = _AsgiHeaders()


class _Request:
    def __init__(self, span: trace.Span) -> None:
        self._span = span

    def respond(self, status: int) -> None:
        self._span.set_attribute("http.response.status_code", status)
        if status >= 500:  # a 4xx is the client's error, not the server's (semantic conventions)
            self._span.set_status(Status(StatusCode.ERROR))


def _wall_ns(monotonic: float) -> int:
    """A time.monotonic() reading as the Unix nanoseconds spans carry."""
    return time.time_ns() - int((time.monotonic() - monotonic) * 1e9)


class OtelTracing(Tracing):
    """Spans exported over OTLP/HTTP in batches by a background thread."""

    enabled = True

    def __init__(self) -> None:
        resource = Resource.create({SERVICE_VERSION: __version__})  # + OTEL_SERVICE_NAME etc.
        if str(resource.attributes.get(SERVICE_NAME, "")).startswith("unknown_service"):
            resource = resource.merge(Resource({SERVICE_NAME: "clipserve"}))
        self._provider = TracerProvider(resource=resource)  # the sampler from OTEL_TRACES_*
        self._provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
        self._tracer = self._provider.get_tracer("clipserve", __version__)

    @contextlib.contextmanager
    def request(self, method: str, route: str, headers: Headers) -> Iterator[RequestSpan]:
        caller = propagate.extract(headers, getter=_GETTER)
        attributes = {"http.request.method": method, "http.route": route}
        with self._tracer.start_as_current_span(
            f"{method} {route}", caller, SpanKind.SERVER, attributes
        ) as span:
            yield _Request(span)

    @contextlib.contextmanager
    def span(
        self, name: str, attributes: Mapping[str, Any] | None = None, parent: object = None
    ) -> Iterator[None]:
        context = parent if isinstance(parent, Context) else None  # None: the current one
        with self._tracer.start_as_current_span(name, context, attributes=attributes):
            yield

    def capture(self) -> object | None:
        return otel_context.get_current()

    @contextlib.contextmanager
    def batch(
        self, name: str, items: Sequence[Traced], attributes: Mapping[str, Any]
    ) -> Iterator[None]:
        start = time.monotonic()
        # One queue-wait span per submit (its items share one captured context) ...
        groups: dict[int, tuple[Context, float, int]] = {}
        for item in items:
            if isinstance(ctx := item.trace, Context):
                _, since, count = groups.get(id(ctx), (ctx, item.enqueued, 0))
                groups[id(ctx)] = (ctx, min(since, item.enqueued), count + 1)
        parent: Context | None = None
        links: dict[tuple[int, int], Link] = {}
        for ctx, since, count in groups.values():
            wait = self._tracer.start_span(
                "queue wait", ctx, attributes={"clipserve.items": count}, start_time=_wall_ns(since)
            )
            wait.end(_wall_ns(start))
            requested = trace.get_current_span(ctx).get_span_context()
            if requested.is_valid:
                links.setdefault((requested.trace_id, requested.span_id), Link(requested))
                if parent is None and requested.trace_flags.sampled:
                    parent = ctx
        if parent is None:  # no traced request in this batch: no span to record
            yield
            return
        # ... and the batch in the trace of its first sampled request, linked to all of them:
        # a batch span of its own trace would make one trace per batch, not per request.
        with self._tracer.start_as_current_span(
            name,
            parent,
            attributes={**attributes, "clipserve.requests": len(links)},
            links=list(links.values()),
            start_time=_wall_ns(start),
        ):
            yield

    def shutdown(self) -> None:
        # The SDK's export thread is a daemon: giving up here does not keep the process alive.
        last = threading.Thread(target=self._provider.shutdown, name="otel-shutdown", daemon=True)
        last.start()
        last.join(SHUTDOWN_S)
        if last.is_alive():
            log.warning(
                "tracing: the last spans were not exported within %g s; exiting", SHUTDOWN_S
            )
