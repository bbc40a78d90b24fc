"""`clipserve gate`: what stays up in front of a ClipService that KEDA scales to zero.

It passes every request on to the servers' Service. While no server is ready (scaled to zero,
or the first pod still loading its model) the Service has no endpoints, and a connection to it
is refused or, where the node's firewall drops it (many NetworkPolicy plugins do), never
answered. So the gate does not learn it from each request: it asks the Service's /readyz twice
a second on a fresh connection, and while none answers it answers at once with 503 and
Retry-After, never holding the request, and counts it: that count is what wakes the service
(the chart's ScaledObject activates on the rate of authorized requests the gate sees). With
API keys (the server's own flags and variables), a request without a valid key gets 401 here
and wakes nothing; the server's pages (playground, Swagger UI), which ask for the key
themselves, pass without one but never wake the service. A client that goes away has its
request cancelled upstream too. The gate answers /healthz, /readyz and /metrics itself. It
imports nothing of torch: it starts in a second and uses a few tens of MB.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from typing import Any

import httpx
import uvicorn
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from clipserve import errors, settings
from clipserve.errors import (
    ClipServeError,
    Overloaded,
    Unauthorized,
    UpstreamError,
    UpstreamTimeout,
)
from clipserve.http import auth
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
# The server answers its pages without a key (pages.py, routes marked PUBLIC): the playground
# at /, Swagger UI and the OpenAPI document under /schema, their files under /static/.
PAGE_PATHS = ("/", "/schema")
PAGE_PREFIXES = ("/schema/", "/static/")
# Idle connections to the servers are dropped after this long: uvicorn closes them after 5 s,
# and a request sent on one that it is closing just then fails (502) without reaching it.
KEEPALIVE_EXPIRY_S = 4.0
# Sent again once on a fresh connection when the first failed before any answer: nothing of
# them can have changed anything (RFC 9110 9.2.2).
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS"})
# How often the gate asks whether a server takes connections, and how long a probe may take: a
# cold start lasts tens of seconds, so half a second is noise in it (kube-proxy takes about as
# long to route to a new endpoint); in-cluster a connection is made in a millisecond, so one not
# made in a second is not coming.
PROBE_INTERVAL_S = 0.5
PROBE_TIMEOUT = httpx.Timeout(2.0, connect=1.0)


class ClientGone(Exception):
    """The client disconnected before its request body was all in."""


class Body:
    """The client's request body as it arrives (streamed to the server, never buffered whole);
    `started` once its first part was read, after which it cannot be sent again."""

    def __init__(self, receive: Receive) -> None:
        self._receive = receive
        self.started = False
        self.done = asyncio.Event()

    async def __aiter__(self) -> AsyncIterator[bytes]:
        self.started = True
        while True:
            message = await self._receive()
            if message["type"] == "http.disconnect":
                raise ClientGone
            more = bool(message.get("more_body"))
            if not more:
                self.done.set()
            yield message.get("body", b"")
            if not more:
                return


class Gate:
    """The ASGI app: own paths answered here, the rest proxied to backend (or 503 when none)."""

    def __init__(
        self,
        backend: str,
        retry_after_s: int,
        timeout_s: float,
        api_keys: frozenset[str] = frozenset(),
    ) -> None:
        self.backend = backend.rstrip("/")
        self._base = httpx.URL(self.backend)
        self.retry_after_s = retry_after_s
        self.timeout = httpx.Timeout(timeout_s, connect=5.0)
        self.keys = [k.encode() for k in api_keys]
        self.metrics = GateMetrics()
        self._client: httpx.AsyncClient | None = None
        self._watcher: asyncio.Task[None] | None = None
        # Until the first probe says otherwise a request is tried: a server may well be up.
        self._reachable = True
        self.metrics.servers_reachable.set(1)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            if scope["path"] in OWN_PATHS:
                await self._own(scope["path"], send)
            else:
                await self._gated(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                # No pool limit: the servers' own queues decide what they can take.
                limits = httpx.Limits(
                    max_connections=None,
                    max_keepalive_connections=64,
                    keepalive_expiry=KEEPALIVE_EXPIRY_S,
                )
                self._client = httpx.AsyncClient(timeout=self.timeout, limits=limits)
                self._watcher = asyncio.ensure_future(self._watch_servers())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self._watcher is not None:
                    self._watcher.cancel()
                if self._client is not None:
                    await self._client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _watch_servers(self) -> None:
        """Probe the servers' /readyz every PROBE_INTERVAL_S while the gate runs, on a fresh
        connection each time (a kept-alive one may lead to a pod that is gone): one not made
        means no server takes connections; a 200 means one does; anything else (a slow or cut
        answer) tells neither."""
        url = self._upstream(b"/readyz")
        limits = httpx.Limits(max_keepalive_connections=0)
        async with httpx.AsyncClient(timeout=PROBE_TIMEOUT, limits=limits) as probe:
            while True:
                try:
                    answer = await probe.get(url)
                except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                    self._set_reachable(False, repr(exc))
                except httpx.HTTPError:
                    pass
                else:
                    if answer.status_code == 200:
                        self._set_reachable(True)
                await asyncio.sleep(PROBE_INTERVAL_S)

    def _set_reachable(self, reachable: bool, why: str = "") -> None:
        if reachable != self._reachable:
            if reachable:
                log.info("a server takes connections again: requests are passed on")
            else:
                log.info("no server takes connections (%s): 503 until one does", why)
        self._reachable = reachable
        self.metrics.servers_reachable.set(1 if reachable else 0)

    async def _own(self, path: str, send: Send) -> None:
        if path == "/metrics":
            await _respond(send, 200, generate_latest(self.metrics.registry), CONTENT_TYPE_LATEST)
        else:
            await _respond(send, 200, b"ok", "text/plain")

    async def _gated(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Check the key, then pass the request on; only an authorized one counts as waking."""
        path = scope["path"]
        if not self.keys or auth.authorized(scope["headers"], self.keys):
            outcome = await self._proxy(scope, receive, send)
        elif path in PAGE_PATHS or path.startswith(PAGE_PREFIXES):
            await self._proxy(scope, receive, send)
            outcome = "page"
        else:
            await _fail(send, path, Unauthorized())
            outcome = "unauthorized"
        self.metrics.requests.labels(outcome).inc()

    async def _proxy(self, scope: Scope, receive: Receive, send: Send) -> str:
        """Pass the request on, cancelling it upstream if its client goes away (servers do not
        notice a gone client themselves: middleware.cancel_on_disconnect). Returns the outcome."""
        if not self._reachable:
            await _fail(send, scope["path"], self._unavailable())
            return "unavailable"
        body = Body(receive) if _has_body(scope) else None
        exchange = asyncio.ensure_future(self._exchange(scope, body, send))
        gone = False

        async def watch() -> None:
            nonlocal gone
            if body is not None:
                await body.done.wait()  # until then the disconnect comes through the body
            while (await receive())["type"] != "http.disconnect":
                pass
            gone = True
            exchange.cancel()

        watcher = asyncio.ensure_future(watch())
        try:
            return await exchange
        except asyncio.CancelledError:
            if not gone:  # cancelled from outside (shutdown): pass it on
                raise
            return "cancelled"
        except ClientGone:
            return "cancelled"
        finally:
            watcher.cancel()

    async def _exchange(self, scope: Scope, body: Body | None, send: Send) -> str:
        assert self._client is not None, "lifespan startup has not run"
        # The path and query as the client sent them, byte for byte: decoded, a %3F would
        # become a query upstream, a %2F a path separator, a %10 an invalid URL.
        target = scope["raw_path"]
        if scope.get("query_string"):
            target += b"?" + scope["query_string"]
        url = self._upstream(target)
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in HOP_BY_HOP]
        for attempt in (1, 2):
            request = self._client.build_request(
                scope["method"], url, headers=headers, content=body
            )
            try:
                response = await self._client.send(request, stream=True)
                break
            except (httpx.ConnectError, httpx.ConnectTimeout) as exc:
                # No connection made, refused or dropped: the Service has no ready endpoint
                # (scaled to zero, or still loading). Nothing reached a server: 503, not 504.
                self._set_reachable(False, repr(exc))
                await _fail(send, scope["path"], self._unavailable())
                return "unavailable"
            except httpx.TimeoutException as exc:
                why = f"the server did not answer in time ({type(exc).__name__})"
                await _fail(send, scope["path"], UpstreamTimeout(why))
                return "error"
            except httpx.TransportError as exc:
                if attempt == 1 and _resendable(scope["method"], body, exc):
                    # Most likely a kept-alive connection the server closed just then.
                    what = f"{scope['method']} {scope['path']}"
                    log.info("%s failed before any answer (%r): sent again", what, exc)
                    continue
                why = f"the server's connection failed: {exc}"
                await _fail(send, scope["path"], UpstreamError(why))
                return "error"
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
        return "proxied"

    def _upstream(self, raw_path: bytes) -> httpx.URL:
        """The backend's URL for `raw_path` (with its query), below the backend's own path."""
        return self._base.copy_with(raw_path=self._base.raw_path.rstrip(b"/") + raw_path)

    def _unavailable(self) -> Overloaded:
        return Overloaded(
            "no server is ready: the service is scaled to zero or its first pod is still"
            f" starting; retry after {self.retry_after_s} s",
            retry_after_s=self.retry_after_s,
        )


def _has_body(scope: Scope) -> bool:
    """Whether the request carries a body (a length above 0, or chunks)."""
    for name, value in scope["headers"]:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return True
    return False


def _resendable(method: str, body: Body | None, exc: httpx.TransportError) -> bool:
    """Whether a request that failed before any answer may be sent again: none of its body was
    read from the client (it could not be sent twice), and either it is idempotent or it failed
    while its head was being written (the server cannot have acted on half a request)."""
    if body is not None and body.started:
        return False
    return method in IDEMPOTENT or isinstance(exc, httpx.WriteError)


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


async def _fail(send: Send, path: str, exc: ClipServeError) -> None:
    """The server's own error response for `exc` (errors.encoded): the same status, headers and
    body, byte for byte, in OpenAI's shape under /v1/."""
    status, headers, body = errors.encoded(path, exc)
    extra = [(k.lower().encode(), v.encode()) for k, v in headers.items()]
    await _respond(send, status, body, "application/json", extra)


KEY_SETTINGS = ("api_key", "api_key_file")


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
    # The server's own key flags and variables: give the gate the keys its servers have.
    settings.add_arguments(gate, only=KEY_SETTINGS)


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
    try:
        keys = settings.from_args(
            argparse.Namespace(**{name: getattr(args, name) for name in KEY_SETTINGS})
        ).api_keys()
    except ValueError as exc:  # a key file that cannot be read or holds no key: as the server
        print(f"clipserve gate: {exc}", file=sys.stderr)
        return 2
    app = Gate(args.backend, args.retry_after_s, args.timeout_s, keys)
    log.info(
        "gate on %s:%s for %s (%s)",
        args.host,
        args.port,
        app.backend,
        f"{len(keys)} API key(s)" if keys else "no API key: every request passes and wakes",
    )
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
