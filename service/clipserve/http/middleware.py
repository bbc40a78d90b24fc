"""ASGI middleware: request metrics, bearer-key auth, the X-Clip-Model header, and
cancelling the work of clients that went away."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable

import msgspec
from litestar.types import (
    ASGIApp,
    HTTPResponseBodyEvent,
    HTTPResponseStartEvent,
    Message,
    Receive,
    ReceiveMessage,
    Scope,
    Send,
)

from clipserve.http.auth import CHALLENGE, DETAIL, authorized
from clipserve.http.openai import OPENAI_PREFIX, error_body
from clipserve.metrics import Metrics

MODEL_HEADER = "X-Clip-Model"
_MODEL_HEADER_KEY = MODEL_HEADER.lower().encode()  # ASGI header names are lower-case bytes
# Route opt: served without an API key (the pages, which ask for the key themselves).
PUBLIC = "public"


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
            finally:
                metrics.requests.labels(endpoint, str(status)).inc()
                metrics.request_duration.labels(endpoint).observe(time.perf_counter() - start)

        return wrapped

    return middleware


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


def bearer_auth(keys: frozenset[str], open_paths: Iterable[str]) -> Callable[[ASGIApp], ASGIApp]:
    """Require `Authorization: Bearer <key>` except on open paths and PUBLIC routes (no keys:
    no auth)."""
    open_set = frozenset(open_paths)
    encoded = [k.encode() for k in keys]
    detail = DETAIL
    body = msgspec.json.encode({"status_code": 401, "detail": detail})
    openai_body = msgspec.json.encode(error_body(401, detail))  # what OpenAI clients parse

    def allowed(scope: Scope) -> bool:
        return authorized(scope["headers"], encoded)

    def middleware(app: ASGIApp) -> ASGIApp:
        if not keys:
            return app

        async def wrapped(scope: Scope, receive: Receive, send: Send) -> None:
            if (
                scope["type"] != "http"
                or scope["path"] in open_set
                or scope["route_handler"].opt.get(PUBLIC)
                or allowed(scope)
            ):
                await app(scope, receive, send)
                return
            answer = openai_body if scope["path"].startswith(OPENAI_PREFIX) else body
            start: HTTPResponseStartEvent = {
                "type": "http.response.start",
                "status": 401,
                "headers": [
                    (b"content-type", b"application/json"),
                    CHALLENGE,
                    (b"content-length", str(len(answer)).encode()),
                ],
            }
            await send(start)
            end: HTTPResponseBodyEvent = {
                "type": "http.response.body",
                "body": answer,
                "more_body": False,
            }
            await send(end)

        return wrapped

    return middleware


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
