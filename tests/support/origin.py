"""A real local HTTP origin for tests: serves chosen bytes, statuses, redirects and slow bodies.

It is a `ThreadingHTTPServer` on 127.0.0.1 (a free port) running in a daemon thread, so both
in-process async clients and separate server processes can fetch from it. Usage:

    with Origin() as origin:
        origin.add("/cat.png", png_bytes, content_type="image/png")
        origin.redirect("/r", "/cat.png")
        origin.add("/slow", b"x" * 10, delay_s=30)          # headers after 30 s
        origin.add("/drip", b"x" * 100, chunk_size=1, chunk_delay_s=0.1)
        origin.add("/huge", endless(), declare_length=None)  # endless chunked body
        origin.add("/ckpt.pt", data, ranges=True, cut_after=1000)  # Range requests; the first
                                                                   # answer stops after 1000 bytes
        origin.add("/both.pt", data, meet=2)  # answers pause after a piece until 2 GETs came
        url = origin.url("/cat.png")
        ...
        origin.hits("/cat.png"), origin.sent_bytes("/huge"), origin.requests[-1].headers
        origin.peak_in_flight  # most requests it was answering at once

`Origin(tls=(certfile, keyfile))` serves https instead (`self_signed(folder)` makes a pair for
127.0.0.1); `Origin(rate_bps=25e6)` sends every body over one shared 25 MB/s link (a cluster's
egress to the hub). Sleeps wait on an event that `close()`
sets, so closing never waits for a slow route.
"""

from __future__ import annotations

import contextlib
import itertools
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import TracebackType

Body = bytes | Callable[[], Iterable[bytes]]


@dataclass(frozen=True)
class Route:
    """What the origin answers on one path."""

    body: Body = b""
    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0  # before the status line
    chunk_size: int = 65536
    chunk_delay_s: float = 0.0  # between body chunks
    # True: real length; int: that value; None: chunked; False: neither (ends at the close)
    declare_length: int | bool | None = True
    ranges: bool = False  # answer `Range: bytes=N-` with 206 (a bytes body only)
    cut_after: int | None = None  # drop the connection after this many body bytes...
    cuts: int = 1  # ...in this many answers (then whole answers)
    busy: int = 0  # answer this many requests 503 first
    meet: int = 0  # after its first piece, an answer waits until this many GETs of the path


@dataclass(frozen=True)
class Seen:
    """One request the origin received."""

    method: str
    path: str
    headers: dict[str, str]
    client: str = ""  # the peer's address


def self_signed(folder: Path) -> tuple[str, str]:
    """A certificate and key for 127.0.0.1 that nothing trusts unless told (SSL_CERT_FILE)."""
    cert, key = str(folder / "cert.pem"), str(folder / "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1"],
        check=True, capture_output=True,
    )  # fmt: skip
    return cert, key


def endless(chunk: bytes = b"\xff" * 65536) -> Callable[[], Iterator[bytes]]:
    """A body factory that never ends (the client must stop reading)."""
    return lambda: itertools.repeat(chunk)


class Origin:
    """The server; a context manager. Routes can be added while it runs."""

    def __init__(
        self,
        host: str = "127.0.0.1",
        *,
        tls: tuple[str, str] | None = None,
        rate_bps: float | None = None,
    ) -> None:
        """Listen on `host` (a free port); `tls=(certfile, keyfile)` serves https; `rate_bps`:
        every answer's body shares one link of that many bytes per second."""
        self.pace = _Pace(rate_bps) if rate_bps else None
        self.routes: dict[str, Route] = {}
        self.requests: list[Seen] = []
        self._sent: dict[str, int] = {}
        self._cuts: dict[str, int] = {}
        self._busy: dict[str, int] = {}
        self._in_flight = 0
        self.peak_in_flight = 0  # most requests being answered at once, since the start
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._arrived = threading.Condition(self._lock)  # a request was recorded
        self._server = _Server((host, 0), _handler_for(self))
        self._server.daemon_threads = True
        self._server.block_on_close = False
        if tls is not None:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            # Handshake in the handler thread, not in the accept loop.
            self._server.socket = ctx.wrap_socket(
                self._server.socket, server_side=True, do_handshake_on_connect=False
            )
        self.scheme = "https" if tls else "http"
        self.host = host
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)
        self._thread.start()

    @property
    def base_url(self) -> str:
        """`http(s)://host:port` of the origin."""
        return f"{self.scheme}://{self.host}:{self.port}"

    def url(self, path: str) -> str:
        """Absolute URL of a path on this origin."""
        return self.base_url + path

    def add(
        self,
        path: str,
        body: Body = b"",
        *,
        content_type: str = "application/octet-stream",
        **route: object,
    ) -> str:
        """Serve `body` on `path` (Route fields as keywords); returns the URL."""
        headers = {"Content-Type": content_type, **route.pop("headers", {})}  # type: ignore[dict-item]
        self.routes[path] = Route(body=body, headers=headers, **route)  # type: ignore[arg-type]
        return self.url(path)

    def redirect(self, path: str, location: str, status: int = 302) -> str:
        """Answer `path` with a redirect to `location`; returns the URL."""
        self.routes[path] = Route(status=status, headers={"Location": location})
        return self.url(path)

    def hits(self, path: str) -> int:
        """How many requests reached `path`."""
        with self._lock:
            return sum(1 for r in self.requests if r.path == path)

    def sent_bytes(self, path: str) -> int:
        """How many body bytes the origin managed to write for `path` (all requests)."""
        with self._lock:
            return self._sent.get(path, 0)

    def close(self) -> None:
        """Stop serving; slow handlers wake up and give up."""
        self._stop.set()
        with self._arrived:
            self._arrived.notify_all()
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self) -> Origin:
        return self

    def __exit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def _record(self, seen: Seen) -> None:
        with self._arrived:
            self.requests.append(seen)
            self._arrived.notify_all()

    def _meet(self, path: str, gets: int) -> None:
        """Wait until `gets` GET requests of `path` have arrived (or the origin closes): two
        clients' transfers made to overlap, whatever their start-up takes."""
        with self._arrived:
            self._arrived.wait_for(
                lambda: (
                    self._stop.is_set()
                    or sum(1 for r in self.requests if r.path == path and r.method == "GET") >= gets
                )
            )

    @contextlib.contextmanager
    def _answering(self) -> Iterator[None]:
        with self._lock:
            self._in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self._in_flight)
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1

    def _count(self, path: str, n: int) -> None:
        with self._lock:
            self._sent[path] = self._sent.get(path, 0) + n

    def _take_busy(self, path: str, route: Route) -> bool:
        """True while the route still has busy answers left."""
        with self._lock:
            self._busy[path] = self._busy.get(path, 0) + 1
            return self._busy[path] <= route.busy

    def _take_cut(self, path: str, route: Route) -> int | None:
        """The byte count to cut this answer at, if the route still has cuts left."""
        with self._lock:
            if route.cut_after is None or self._cuts.get(path, 0) >= route.cuts:
                return None
            self._cuts[path] = self._cuts.get(path, 0) + 1
            return route.cut_after


class _Pace:
    """One shared link: each body piece waits until the link has carried the ones before it."""

    def __init__(self, rate_bps: float) -> None:
        self.rate_bps = rate_bps
        self._lock = threading.Lock()
        self._free_at = time.monotonic()

    def take(self, n: int) -> float:
        """Seconds to wait before sending n bytes."""
        with self._lock:
            now = time.monotonic()
            start = max(now, self._free_at)
            self._free_at = start + n / self.rate_bps
            return start - now


class _Server(ThreadingHTTPServer):
    """A deeper accept backlog: with the default 5, bursts of connections wait for SYN retries."""

    request_queue_size = 128

    def handle_error(self, request: object, client_address: object) -> None:
        """Clients that hang up or reject our certificate are expected in tests: stay quiet."""


def _handler_for(origin: Origin) -> type[BaseHTTPRequestHandler]:
    """A handler class bound to one Origin (http.server instantiates it per request)."""

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: object) -> None:
            """Keep test output quiet."""

        def do_GET(self) -> None:
            self._serve("GET")

        def do_HEAD(self) -> None:
            self._serve("HEAD")

        def _serve(self, method: str) -> None:
            with origin._answering():
                self._serve_one(method)

        def _serve_one(self, method: str) -> None:
            path = self.path.split("?", 1)[0]
            origin._record(Seen(method, path, dict(self.headers.items()), self.client_address[0]))
            route = origin.routes.get(path)
            if route is None:
                route = Route(status=404, body=b"not found")
            if route.delay_s and origin._stop.wait(route.delay_s):
                return
            if route.busy and origin._take_busy(path, route):
                route = Route(status=503, body=b"busy", headers={"Retry-After": "1"})
            elif route.ranges:
                route = self._ranged(route)
            # The client may stop reading on purpose (byte cap, timeout tests).
            with contextlib.suppress(BrokenPipeError, ConnectionResetError, ssl.SSLError):
                self._answer(path, route, head=method == "HEAD")

        def _ranged(self, route: Route) -> Route:
            """The part of a bytes body a `Range: bytes=N-` header asks for, as HTTP says."""
            assert isinstance(route.body, bytes), "ranges need a bytes body"
            size = len(route.body)
            headers = {**route.headers, "Accept-Ranges": "bytes"}
            asked = self.headers.get("Range", "")
            if_range = self.headers.get("If-Range")
            if not asked.startswith("bytes=") or not asked.endswith("-"):
                return replace(route, headers=headers)
            if if_range is not None and if_range != route.headers.get("ETag"):
                return replace(route, headers=headers)  # changed since: the whole file again
            start = int(asked[len("bytes=") : -1])
            if start >= size:
                headers["Content-Range"] = f"bytes */{size}"
                return replace(route, status=416, body=b"", headers=headers)
            headers["Content-Range"] = f"bytes {start}-{size - 1}/{size}"
            return replace(route, status=206, body=route.body[start:], headers=headers)

        def _answer(self, path: str, route: Route, *, head: bool = False) -> None:
            body = route.body
            self.send_response(route.status)
            for name, value in route.headers.items():
                self.send_header(name, value)
            if head:
                if isinstance(body, bytes) and route.declare_length is True:
                    self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                return
            cut = origin._take_cut(path, route) if route.status in (200, 206) else None
            chunked = route.declare_length is None
            if chunked:
                self.send_header("Transfer-Encoding", "chunked")
            elif route.declare_length is False:  # HTTP/1.0 style: the close ends the body
                self.send_header("Connection", "close")
                self.close_connection = True
            elif route.declare_length is True:
                assert isinstance(body, bytes), "a streamed body needs declare_length=int|None"
                self.send_header("Content-Length", str(len(body)))
            else:
                self.send_header("Content-Length", str(route.declare_length))
            self.end_headers()
            for i, piece in enumerate(_pieces(body, route.chunk_size)):
                if i == 1 and route.meet:
                    origin._meet(path, route.meet)
                if route.chunk_delay_s and origin._stop.wait(route.chunk_delay_s):
                    return
                if origin._stop.is_set():
                    return
                if origin.pace and origin._stop.wait(origin.pace.take(len(piece))):
                    return
                if cut is not None:
                    piece = piece[:cut]
                    cut -= len(piece)
                    if not piece:
                        self.close_connection = True  # mid-body: the client sees a cut
                        return
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece)
                self.wfile.flush()
                origin._count(path, len(piece))
            if chunked:
                self.wfile.write(b"0\r\n\r\n")

    return Handler


def _pieces(body: Body, size: int) -> Iterator[bytes]:
    """Split a body (bytes or a chunk factory) into pieces of at most `size` bytes."""
    chunks = [body] if isinstance(body, bytes) else body()
    for chunk in chunks:
        for i in range(0, len(chunk), size):
            yield chunk[i : i + size]
