"""`clipserve gate`: what stays up in front of a ClipService that KEDA scales to zero.

It passes every request on to the servers' Service. While no server is ready (scaled to zero,
or the first pod still loading its model) the Service has no endpoints and refuses connections;
the gate then answers at once with 503 and Retry-After, never holding the request, and counts
it: that count is what wakes the service (the chart's ScaledObject activates on the rate of
requests the gate sees). The gate answers /healthz, /readyz and /metrics itself. It imports
nothing of torch: it starts in a second and uses a few tens of MB.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import httpx
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from clipserve.metrics import GateMetrics

log = logging.getLogger("clipserve.gate")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

# Hop-by-hop headers (RFC 9110 7.6.1) are the connection's, not the request's; Host names the
# gate: none is passed on.
HOP_BY_HOP = {
    b"connection",
    b"keep-alive",
    b"proxy-authenticate",
    b"proxy-authorization",
    b"te",
    b"trailer",
    b"transfer-encoding",
    b"upgrade",
    b"host",
}
OWN_PATHS = ("/healthz", "/readyz", "/metrics")


class Gate:
    """The ASGI app: own paths answered here, the rest proxied to backend (or 503 when none)."""

    def __init__(self, backend: str, retry_after_s: int, timeout_s: float) -> None:
        self.backend = backend.rstrip("/")
        self.retry_after_s = retry_after_s
        self.timeout = httpx.Timeout(timeout_s, connect=5.0)
        self.metrics = GateMetrics()
        self._client: httpx.AsyncClient | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            if scope["path"] in OWN_PATHS:
                await self._own(scope["path"], send)
            else:
                await self._proxy(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                # No pool limit: the servers' own queues decide what they can take.
                limits = httpx.Limits(max_connections=None, max_keepalive_connections=64)
                self._client = httpx.AsyncClient(timeout=self.timeout, limits=limits)
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._client is not None:
                    await self._client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _own(self, path: str, send: Send) -> None:
        if path == "/metrics":
            await _respond(send, 200, generate_latest(self.metrics.registry), CONTENT_TYPE_LATEST)
        else:
            await _respond(send, 200, b"ok", "text/plain")

    async def _proxy(self, scope: Scope, receive: Receive, send: Send) -> None:
        assert self._client is not None, "lifespan startup has not run"
        url = self.backend + scope["path"]
        if scope.get("query_string"):
            url += "?" + scope["query_string"].decode("latin-1")
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in HOP_BY_HOP]
        request = self._client.build_request(
            scope["method"], url, headers=headers, content=_body(receive)
        )
        try:
            response = await self._client.send(request, stream=True)
        except httpx.ConnectError:
            # Refused: the Service has no ready endpoint (scaled to zero, or still loading).
            self.metrics.requests.labels("unavailable").inc()
            await self._unavailable(send)
            return
        except httpx.TimeoutException as exc:
            self.metrics.requests.labels("error").inc()
            await _error(send, 504, f"the server did not answer in time ({type(exc).__name__})")
            return
        except httpx.TransportError as exc:
            self.metrics.requests.labels("error").inc()
            await _error(send, 502, f"the server's connection failed: {exc}")
            return
        self.metrics.requests.labels("proxied").inc()
        try:
            kept = [(k, v) for k, v in response.headers.raw if k.lower() not in HOP_BY_HOP]
            await send(
                {"type": "http.response.start", "status": response.status_code, "headers": kept}
            )
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await response.aclose()

    async def _unavailable(self, send: Send) -> None:
        detail = (
            "no server is ready: the service is scaled to zero or its first pod is still"
            f" starting; retry after {self.retry_after_s} s"
        )
        body = json.dumps({"status_code": 503, "detail": detail}).encode()
        await _respond(
            send,
            503,
            body,
            "application/json",
            [(b"retry-after", str(self.retry_after_s).encode())],
        )


async def _body(receive: Receive) -> AsyncIterator[bytes]:
    """The request body as it arrives (streamed to the server, never buffered whole)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        yield message.get("body", b"")
        if not message.get("more_body"):
            return


async def _respond(
    send: Send,
    status: int,
    body: bytes,
    content_type: str,
    extra: list[tuple[bytes, bytes]] | None = None,
) -> None:
    headers = [(b"content-type", content_type.encode()), *(extra or [])]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _error(send: Send, status: int, detail: str) -> None:
    body = json.dumps({"status_code": status, "detail": detail}).encode()
    await _respond(send, status, body, "application/json")


def add_parser(sub: Any) -> None:
    """The `gate` subcommand."""
    gate = sub.add_parser(
        "gate",
        help="stay up in front of a service that scales to zero (503 + Retry-After while cold)",
        description=__doc__.split("\n\n")[1].replace("\n", " ") if __doc__ else None,
    )
    gate.add_argument("--backend", required=True, help="the servers' URL, e.g. http://search:3000")
    gate.add_argument("--host", default="127.0.0.1", help="address to listen on")
    gate.add_argument("--port", type=int, default=3000, help="port to listen on")
    gate.add_argument(
        "--retry-after-s",
        type=int,
        default=15,
        help="Retry-After of the 503 while no server is ready (about a cold start)",
    )
    gate.add_argument(
        "--timeout-s", type=float, default=300.0, help="longest wait for a server's answer"
    )
    gate.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])


def main(args: argparse.Namespace) -> int:
    """Run the gate until SIGTERM."""
    if args.retry_after_s < 1 or args.timeout_s <= 0:
        print("clipserve gate: --retry-after-s must be >= 1 and --timeout-s > 0", file=sys.stderr)
        return 2
    if not args.backend.startswith(("http://", "https://")):
        print(
            f"clipserve gate: --backend must be an http(s):// URL, not {args.backend!r}",
            file=sys.stderr,
        )
        return 2
    logging.basicConfig(
        level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    app = Gate(args.backend, args.retry_after_s, args.timeout_s)
    log.info("gate on %s:%s for %s", args.host, args.port, app.backend)
    uvicorn.run(
        app,
        host=args.host,
        port=args.port,
        log_level=args.log_level,
        access_log=False,
        lifespan="on",
        loop="uvloop",
        http="httptools",
    )
    return 0
