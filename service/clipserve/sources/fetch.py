"""Fetch image URLs safely: http(s) only, timeouts, a streamed byte cap, checked redirects.

The SSRF guard lives in the connection layer: a custom httpcore network backend resolves the host
itself, refuses internal addresses, and connects to the very IP it checked. There is no second DNS
lookup between check and connect, so DNS rebinding cannot slip an internal address in, and TLS
still uses the URL's host name for SNI and certificate checks (httpcore does the TLS handshake
over the stream our backend returns). Every redirect hop opens its connection through the same
backend, so every hop is checked. A body's bytes count against the process's ByteBudget from
its headers until the caller has decoded them (`fetching`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import re
import socket
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass

import httpcore
import httpx

from clipserve.errors import InvalidInput, PayloadTooLarge, UpstreamError, UpstreamTimeout
from clipserve.sources.byte_budget import ByteBudget, Hold
from clipserve.tracing import OFF, Tracing

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
# (host, port) -> IP address strings; the default asks the OS resolver off the event loop.
Resolver = Callable[[str, int], Awaitable[list[str]]]

MAX_URL_CHARS = 8192
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")  # RFC 6052: embeds an IPv4 address
_ENCODINGS = {"", "identity", "gzip", "x-gzip", "deflate"}
# httpx percent-encodes odd host characters instead of refusing them; we refuse them.
# (IDN hosts arrive here already in punycode; IPv6 literals without brackets.)
_HOST = re.compile(r"[A-Za-z0-9_.-]+|[0-9A-Fa-f:.]+")


@dataclass(frozen=True)
class FetchPolicy:
    """Limits for fetching one image URL; `allow`: CIDRs or host names the guard lets through."""

    connect_timeout_s: float = 3.0
    read_timeout_s: float = 5.0
    total_timeout_s: float = 10.0
    max_bytes: int = 20 * 2**20
    max_redirects: int = 3
    allow: tuple[str, ...] = ()  # CIDRs or host names exempt from the SSRF guard

    def __post_init__(self) -> None:
        timeouts = (self.connect_timeout_s, self.read_timeout_s, self.total_timeout_s)
        if min(timeouts) <= 0 or self.max_bytes <= 0 or self.max_redirects < 0:
            raise ValueError(f"fetch limits must be positive: {self}")


def refused_class(ip: IPAddress) -> str | None:
    """The address class the SSRF guard refuses `ip` for, or None if it is a public address."""
    if isinstance(ip, ipaddress.IPv6Address):
        # IPv4 embedded in IPv6 (mapped, 6to4, NAT64) reaches the IPv4 host: judge that one.
        embedded = ip.ipv4_mapped or ip.sixtofour
        if embedded is None and ip in _NAT64:
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is not None:
            return refused_class(embedded)
    checks = (
        ("unspecified", ip.is_unspecified),
        ("loopback", ip.is_loopback),
        ("link-local", ip.is_link_local),
        ("multicast", ip.is_multicast),
        ("reserved", ip.is_reserved),
        ("private", ip.is_private),
        ("non-public", not ip.is_global),  # e.g. 100.64.0.0/10 (carrier NAT, cloud metadata)
    )
    return next((name for name, hit in checks if hit), None)


class AddressGuard:
    """Decides which resolved addresses may be connected to."""

    def __init__(self, allow: Iterable[str] = ()) -> None:
        self.networks: list[IPNetwork] = []
        self.hosts: set[str] = set()
        for entry in (e.strip() for e in allow):
            if not entry:
                continue
            try:
                self.networks.append(ipaddress.ip_network(entry, strict=False))
                continue
            except ValueError:
                pass
            host = _norm_host(entry)
            # A typo in a CIDR must fail at startup, not silently become a host name.
            if not _HOST.fullmatch(host) or not any(c.isalpha() for c in host):
                raise ValueError(f"fetch allow-list entry {entry!r} is neither a CIDR nor a host")
            self.hosts.add(host)

    def check(self, host: str, addresses: list[str]) -> None:
        """Raise InvalidInput if any address of `host` is internal and not allowed."""
        if _norm_host(host) in self.hosts:
            return
        for text in addresses:
            ip = ipaddress.ip_address(text.split("%", 1)[0])  # drop an IPv6 zone id
            mapped = ip.ipv4_mapped if isinstance(ip, ipaddress.IPv6Address) else None
            if any(ip in net or (mapped is not None and mapped in net) for net in self.networks):
                continue
            cls = refused_class(ip)
            if cls is not None:
                # Name the class, not the IP: the IP of an internal host is nobody's business.
                what = "is" if _is_ip(host) else "resolves to"
                raise InvalidInput(
                    f"refused by the SSRF guard: host {host!r} {what} a {cls} address "
                    "(allow it with CLIPSERVE_FETCH_ALLOW)"
                )


async def system_resolve(host: str, port: int) -> list[str]:
    """Resolve with the OS resolver in the loop's executor; unique addresses in OS order."""
    infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))


class GuardedBackend(httpcore.AsyncNetworkBackend):
    """httpcore network backend: resolve, check every address, connect to a checked IP."""

    def __init__(self, guard: AddressGuard, resolve: Resolver = system_resolve) -> None:
        self._guard = guard
        self._resolve = resolve
        self._inner = httpcore.AnyIOBackend()

    async def connect_tcp(
        self,
        host: str,
        port: int,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        local_address: str | None = None,
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Open a TCP stream to `host` only through addresses the guard accepts."""
        try:
            async with asyncio.timeout(timeout):
                addresses = await self._resolve(host, port)
        except TimeoutError as exc:
            raise httpcore.ConnectTimeout(f"resolving {host!r} timed out") from exc
        except (OSError, UnicodeError) as exc:
            raise UpstreamError(f"could not resolve host {host!r}") from exc
        if not addresses:
            raise UpstreamError(f"could not resolve host {host!r}")
        self._guard.check(host, addresses)
        error: Exception | None = None
        for ip in addresses:  # like socket.create_connection: first address that answers
            try:
                return await self._inner.connect_tcp(
                    ip,
                    port,
                    timeout=timeout,
                    local_address=local_address,
                    socket_options=socket_options,
                )
            except (httpcore.ConnectError, httpcore.ConnectTimeout) as exc:
                error = exc
        assert error is not None
        raise error

    async def connect_unix_socket(
        self,
        path: str,
        timeout: float | None = None,  # noqa: ASYNC109 (httpcore's interface)
        socket_options: Iterable[httpcore.SOCKET_OPTION] | None = None,
    ) -> httpcore.AsyncNetworkStream:
        """Never used: image URLs are TCP only."""
        raise InvalidInput("unix sockets are not fetched")

    async def sleep(self, seconds: float) -> None:
        """Delegate (httpcore uses it for retries)."""
        await self._inner.sleep(seconds)


class _GuardedTransport(httpx.AsyncHTTPTransport):
    """httpx's transport with its connection pool rebuilt on the guarded backend."""

    def __init__(self, backend: httpcore.AsyncNetworkBackend, limits: httpx.Limits) -> None:
        # certifi's CAs, or SSL_CERT_FILE / SSL_CERT_DIR when set (a private in-cluster CA).
        ssl_context = httpx.create_ssl_context(trust_env=True)
        super().__init__(verify=ssl_context, limits=limits, trust_env=False)
        # httpx has no public knob for the network backend; `_pool` is the pool it sends
        # through (httpx is pinned; tests/service/sources/test_fetch.py breaks if this stops
        # working).
        self._pool = httpcore.AsyncConnectionPool(
            ssl_context=ssl_context,
            max_connections=limits.max_connections,
            max_keepalive_connections=limits.max_keepalive_connections,
            keepalive_expiry=limits.keepalive_expiry,
            network_backend=backend,
        )


class ImageFetcher:
    """Fetches image bytes from http(s) URLs under a FetchPolicy, within a ByteBudget when
    given one; owns one httpx.AsyncClient."""

    def __init__(
        self,
        policy: FetchPolicy,
        *,
        resolve: Resolver = system_resolve,
        budget: ByteBudget | None = None,
        tracing: Tracing = OFF,
    ) -> None:
        if budget is not None and budget.capacity < policy.max_bytes:
            raise ValueError(
                f"fetch_buffer_bytes ({budget.capacity}) must hold at least one image of "
                f"max_image_bytes ({policy.max_bytes})"
            )
        self.policy = policy
        self._budget = budget
        self._tracing = tracing
        limits = httpx.Limits(max_connections=256, max_keepalive_connections=32)
        backend = GuardedBackend(AddressGuard(policy.allow), resolve)
        self._client = httpx.AsyncClient(
            transport=_GuardedTransport(backend, limits),
            timeout=httpx.Timeout(
                connect=policy.connect_timeout_s,
                read=policy.read_timeout_s,
                write=policy.read_timeout_s,
                pool=policy.total_timeout_s,
            ),
            follow_redirects=False,  # followed by hand so each hop is counted and checked
            trust_env=False,  # a proxy from the environment would bypass the guard
            headers={
                "User-Agent": "clipserve-fetch/1",
                "Accept": "image/*,*/*;q=0.5",
                # Images are compressed already; identity keeps the cap a cap on wire bytes.
                "Accept-Encoding": "identity",
            },
        )

    async def fetch(self, url: str) -> bytes:
        """The body of `url`, following up to `max_redirects` checked redirects."""
        async with self.fetching(url) as data:
            return data

    @contextlib.asynccontextmanager
    async def fetching(self, url: str, since: float | None = None) -> AsyncIterator[bytes]:
        """As `fetch`; the body's bytes count against the budget until the block ends, taken
        in the budget's line at the place of a request that started at `since` (loop time;
        default now)."""
        target = parse_url(url)
        total = self.policy.total_timeout_s
        since = asyncio.get_running_loop().time() if since is None else since
        held = _Held(self._budget, since)
        try:
            try:
                async with asyncio.timeout(total) as deadline:
                    # the host only: a URL's path and query may carry a signed token
                    with self._tracing.span("fetch", {"server.address": target.host}):
                        data = await self._follow(target, held, deadline)
            except TimeoutError as exc:
                raise UpstreamTimeout(f"fetching the image took longer than {total:g} s") from exc
            yield data
        finally:
            held.release()

    async def aclose(self) -> None:
        """Close pooled connections."""
        await self._client.aclose()

    async def _follow(self, url: httpx.URL, held: _Held, deadline: asyncio.Timeout) -> bytes:
        for _ in range(self.policy.max_redirects + 1):
            try:
                async with self._client.stream("GET", url) as response:
                    if response.is_redirect:
                        url = _redirect_target(url, response.headers["Location"])
                        continue
                    if not response.is_success:
                        raise UpstreamError(
                            f"origin {url.host!r} answered HTTP {response.status_code}"
                        )
                    return await self._read_capped(response, held, deadline)
            except httpx.TimeoutException as exc:
                raise UpstreamTimeout(f"origin {url.host!r} timed out ({_phase(exc)})") from exc
            except httpx.HTTPError as exc:
                # Not str(exc): it can carry the resolved IP of an (allowed) internal host.
                reason = type(exc).__name__
                if "CERTIFICATE_VERIFY_FAILED" in str(exc):
                    reason = "TLS certificate verification failed"
                raise UpstreamError(f"could not fetch from {url.host!r}: {reason}") from exc
        raise UpstreamError(f"more than {self.policy.max_redirects} redirects")

    async def _read_capped(
        self, response: httpx.Response, held: _Held, deadline: asyncio.Timeout
    ) -> bytes:
        """Stream the body, stopping as soon as it passes `max_bytes`."""
        cap = self.policy.max_bytes
        declared = response.headers.get("Content-Length", "")
        if declared.isdigit() and int(declared) > cap:
            raise PayloadTooLarge(f"image is {int(declared)} bytes, over the {cap}-byte cap")
        encoding = response.headers.get("Content-Encoding", "").strip().lower()
        if encoding not in _ENCODINGS:
            raise UpstreamError(f"origin used unsupported Content-Encoding {encoding!r}")
        # A declared (identity) length is what the body will hold; otherwise up to the cap.
        sized = declared.isdigit() and encoding in ("", "identity")
        await held.take(int(declared) if sized else cap, deadline)
        # Decompress by hand with an output bound: a small gzip body cannot balloon in memory.
        inflater = zlib.decompressobj(wbits=47) if encoding not in ("", "identity") else None
        body = bytearray()
        try:
            async for raw in response.aiter_raw():
                room = cap - len(body)
                body += inflater.decompress(raw, room + 1) if inflater else raw
                if len(body) > cap:
                    raise PayloadTooLarge(f"image is over the {cap}-byte cap")
        except zlib.error as exc:
            raise UpstreamError(f"origin sent a corrupt {encoding} body") from exc
        held.shrink(len(body))
        # The copy outside the budget is momentary: nothing awaits between it and the
        # bytearray's release, so at most one body, process-wide, is ever held twice.
        return bytes(body)


class _Held:
    """The budget one download holds: taken once its size is known, until it is decoded."""

    def __init__(self, budget: ByteBudget | None, since: float) -> None:
        self._budget = budget
        self._since = since
        self._hold: Hold | None = None

    async def take(self, size: int, deadline: asyncio.Timeout) -> None:
        """Take `size` bytes; the fetch's deadline stops while it waits (other requests'
        images awaiting decoding are no fault of the origin's), and the wait has its own."""
        if self._budget is None:
            return
        loop = asyncio.get_running_loop()
        when, start = deadline.when(), loop.time()
        deadline.reschedule(None)
        try:
            self._hold = await self._budget.take(size, self._since)
        finally:
            if when is not None:
                deadline.reschedule(when + loop.time() - start)

    def shrink(self, size: int) -> None:
        if self._hold is not None:
            self._hold.shrink(size)

    def release(self) -> None:
        if self._hold is not None:
            self._hold.release()


def parse_url(url: str) -> httpx.URL:
    """Parse and check an image URL: http or https with a host, of sane length."""
    if len(url) > MAX_URL_CHARS:
        raise InvalidInput(f"URL is longer than {MAX_URL_CHARS} characters")
    try:
        parsed = httpx.URL(url)
    except (httpx.InvalidURL, ValueError, TypeError) as exc:
        raise InvalidInput(f"not a valid URL: {exc}") from exc
    _check_target(parsed)
    return parsed


def _check_target(url: httpx.URL) -> None:
    if url.scheme not in ("http", "https"):
        shown = url.scheme or "none"
        raise InvalidInput(f"URL scheme {shown!r} is not allowed (use http, https or data:)")
    if not url.host:
        raise InvalidInput("URL has no host")
    if not _HOST.fullmatch(url.raw_host.decode("ascii", "replace")):
        raise InvalidInput("URL host is not a valid host name or IP address")


def _redirect_target(current: httpx.URL, location: str) -> httpx.URL:
    """The next hop of a redirect, checked like the first URL (its address: on connect)."""
    try:
        nxt = current.join(location)
    except (httpx.InvalidURL, ValueError) as exc:
        raise UpstreamError("origin sent an invalid redirect Location") from exc
    try:
        _check_target(nxt)
    except InvalidInput as exc:
        raise InvalidInput(f"redirect refused: {exc.message}") from exc
    return nxt


def _phase(exc: httpx.TimeoutException) -> str:
    """Which timeout fired, in words."""
    return {
        httpx.ConnectTimeout: "connect",
        httpx.ReadTimeout: "read",
        httpx.WriteTimeout: "write",
        httpx.PoolTimeout: "waiting for a connection",
    }.get(type(exc), "timeout")


def _norm_host(host: str) -> str:
    """Compare host names case-insensitively and without a trailing dot or IPv6 brackets."""
    return host.strip().lower().rstrip(".").strip("[]")


def _is_ip(host: str) -> bool:
    """Whether `host` is an IP literal rather than a name."""
    try:
        ipaddress.ip_address(_norm_host(host))
    except ValueError:
        return False
    return True
