"""ASGI middleware: request traces and metrics, bearer-key auth, the X-Clip-Model header, and
cancelling the work of clients that went away."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Callable, Iterable, Sequence
from typing import cast

from litestar.connection import ASGIConnection
from litestar.middleware import (
    AbstractAuthenticationMiddleware,
    AuthenticationResult,
    DefineMiddleware,
)
from litestar.types import (
    ASGIApp,
    HTTPScope,
    Message,
    Receive,
    ReceiveMessage,
    Scope,
    Send,
)

from clipserve.errors import Unauthorized
from clipserve.http.auth import authorized
from clipserve.http.exceptions import to_http
from clipserve.metrics import Metrics
from clipserve.tracing import Tracing

MODEL_HEADER = "X-Clip-Model"
# The digest of the embedding space (models/space.py) beside it, on responses made by a model.
SPACE_HEADER = "X-Clip-Space"
_MODEL_HEADER_KEY = MODEL_HEADER.lower().encode()  # ASGI header names are lower-case bytes
# Route opt (litestar's own key): served without an API key (the pages, which ask for the key
# themselves).
PUBLIC = "exclude_from_auth"
_UNTRACED = frozenset({"/healthz", "/readyz", "/metrics"})


def request_metrics(metrics: Metrics) -> Callable[[ASGIApp], ASGIApp]:
    """Count and time requests by route template (bounded cardinality) and status."""

    def middleware(app: ASGIApp) -> ASGIApp:
        async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http":
                await app(scope, receive, send)
                return
            endpoint = scope.get("path_template") or scope["path"]
            status = 500
            start = time.perf_counter()

            async def send_wrapper(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await app(scope, receive, send_wrapper)
            except Exception as exc:
                # Raised in a middleware inside this one (the API-key check): litestar's
                # outermost exception handler answers it, past this send_wrapper.
                status = to_http(exc).status
                raise
            finally:
                metrics.requests.labels(endpoint, str(status)).inc()
                metrics.request_duration.labels(endpoint).observe(time.perf_counter() - start)

        return wrapped

    return middleware


def request_tracing(tracing: Tracing) -> list[Callable[[ASGIApp], ASGIApp]]:
    """A server span per request (a child of the caller's `traceparent`), current while the
    handler runs, so the engine's spans land in its trace; nothing at all when tracing is off.
    Probes and scrapes are not traced: a trace every few seconds per pod that says nothing."""
    if not tracing.enabled:
        return []

    def middleware(app: ASGIApp) -> ASGIApp:
        async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
            if scope["type"] != "http" or scope["path"] in _UNTRACED:
                await app(scope, receive, send)
                return
            route = scope.get("path_template") or scope["path"]
            method = cast("HTTPScope", scope)["method"]
            with tracing.request(method, route, scope["headers"]) as span:

                async def send_wrapper(message: Message) -> None:
                    if message["type"] == "http.response.start":
                        span.respond(message["status"])
                    await send(message)

                try:
                    await app(scope, receive, send_wrapper)
                except Exception as exc:  # answered outside (as in request_metrics)
                    span.respond(to_http(exc).status)
                    raise

        return wrapped

    return [middleware]


def default_model_header(model: Callable[[], str]) -> Callable[[ASGIApp], ASGIApp]:
    """Add X-Clip-Model (the default model) to responses that did not set it themselves."""

    def middleware(app: ASGIApp) -> ASGIApp:
        async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
            async def send_wrapper(message: Message) -> None:
                if message["type"] == "http.response.start":
                    headers = list(message.get("headers", []))
                    if not any(k.lower() == _MODEL_HEADER_KEY for k, _ in headers):
                        headers.append((_MODEL_HEADER_KEY, model().encode("latin-1", "replace")))
                        message = {**message, "headers": headers}
                await send(message)

            await app(scope, receive, send_wrapper if scope["type"] == "http" else send)

        return wrapped

    return middleware


class ApiKeyAuth(AbstractAuthenticationMiddleware):
    """Require `Authorization: Bearer <key>`, except on the open paths and on routes marked
    PUBLIC (the pages, which ask for the key themselves). A request without a valid key raises
    Unauthorized, which the app's one exception mapping renders (http/exceptions.py): 401 with
    a Bearer challenge, in OpenAI's shape under /v1/."""

    def __init__(self, app: ASGIApp, keys: Sequence[str], open_paths: Iterable[str]) -> None:
        super().__init__(
            app,
            exclude=[f"^{re.escape(path)}$" for path in open_paths] or None,
            exclude_from_auth_key=PUBLIC,  # litestar's default, said once
            exclude_http_methods=[],  # OPTIONS too: litestar would answer it without a key
        )
        self.keys = [k.encode() for k in keys]

    async def authenticate_request(self, connection: ASGIConnection) -> AuthenticationResult:
        if not authorized(connection.scope["headers"], self.keys):
            raise Unauthorized()
        return AuthenticationResult(user=None, auth=None)


def bearer_auth(keys: frozenset[str], open_paths: Iterable[str]) -> list[DefineMiddleware]:
    """The API-key check, or nothing when no key is configured."""
    if not keys:
        return []
    return [DefineMiddleware(ApiKeyAuth, keys=sorted(keys), open_paths=list(open_paths))]


def cancel_on_disconnect(app: ASGIApp) -> ASGIApp:
    """Cancel a request's handler when its client goes away, so its queued items are dropped.

    ASGI servers do not cancel handlers on disconnect; the disconnect only shows up on
    `receive()` once the body has been read. This watches for it beside the handler.
    """

    async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await app(scope, receive, send)
            return
        body_read = asyncio.Event()
        responded = False

        async def receive_wrapper() -> ReceiveMessage:
            message = await receive()
            if message["type"] != "http.request" or not message.get("more_body"):
                body_read.set()
            return message

        async def send_wrapper(message: Message) -> None:
            nonlocal responded
            await send(message)
            if message["type"] == "http.response.body" and not message.get("more_body"):
                responded = True

        handler = asyncio.ensure_future(app(scope, receive_wrapper, send_wrapper))

        async def watch() -> None:
            await body_read.wait()
            while (await receive())["type"] != "http.disconnect":
                pass
            if not responded:
                handler.cancel()

        watcher = asyncio.ensure_future(watch())
        try:
            await handler
        except asyncio.CancelledError:
            if not watcher.done():  # we are being cancelled from outside: pass it on
                raise
        finally:
            watcher.cancel()

    return wrapped
