"""ImageFetcher against a real local HTTP origin: SSRF guard, redirects, byte cap, timeouts."""

from __future__ import annotations

import asyncio
import gzip
import socket
import subprocess
from collections.abc import Iterator

import pytest
from clipserve.errors import (
    InvalidInput,
    Overloaded,
    PayloadTooLarge,
    UpstreamError,
    UpstreamTimeout,
)
from clipserve.sources.byte_budget import ByteBudget
from clipserve.sources.fetch import FetchPolicy, ImageFetcher

from tests.support.origin import Origin, endless

LOOPBACK_OK = ("127.0.0.0/8",)  # the origin lives on loopback; tests that need it allow it


@pytest.fixture(scope="module")
def origin() -> Iterator[Origin]:
    with Origin() as server:
        yield server


def fetch(url: str, **policy: object) -> bytes:
    """Fetch one URL with a fresh fetcher (closed afterwards) on a fresh event loop."""
    return asyncio.run(_fetch_all([url], **policy))[0]


async def _fetch_all(urls: list[str], resolve: object = None, **policy: object) -> list[bytes]:
    extra = {"resolve": resolve} if resolve is not None else {}
    fetcher = ImageFetcher(FetchPolicy(**policy), **extra)  # type: ignore[arg-type]
    try:
        return list(await asyncio.gather(*(fetcher.fetch(u) for u in urls)))
    finally:
        await fetcher.aclose()


# -- plain fetching -------------------------------------------------------------------------


def test_fetch_returns_the_body_and_asks_for_identity_encoding(origin: Origin) -> None:
    url = origin.add("/plain.bin", b"\x89PNG fake bytes")
    assert fetch(url, allow=LOOPBACK_OK) == b"\x89PNG fake bytes"
    seen = [r for r in origin.requests if r.path == "/plain.bin"][-1]
    assert seen.headers["Accept-Encoding"] == "identity"


def test_concurrent_fetches_share_one_fetcher(origin: Origin) -> None:
    urls = [origin.add(f"/many/{i}", bytes([i]) * 1000) for i in range(20)]
    bodies = asyncio.run(_fetch_all(urls, allow=LOOPBACK_OK))
    assert bodies == [bytes([i]) * 1000 for i in range(20)]


def test_a_gzip_body_is_decoded(origin: Origin) -> None:
    url = origin.add("/gz", gzip.compress(b"abc" * 100), headers={"Content-Encoding": "gzip"})
    assert fetch(url, allow=LOOPBACK_OK) == b"abc" * 100


# -- SSRF guard ------------------------------------------------------------------------------


def test_loopback_is_refused_by_default_without_connecting(origin: Origin) -> None:
    url = origin.add("/secret", b"internal")
    with pytest.raises(InvalidInput, match="loopback") as info:
        fetch(url)
    assert "CLIPSERVE_FETCH_ALLOW" in info.value.message
    assert origin.hits("/secret") == 0


@pytest.mark.parametrize(
    ("url", "address_class"),
    [
        ("http://localhost:{port}/", "loopback"),
        ("http://[::1]:{port}/", "loopback"),
        ("http://[::ffff:127.0.0.1]:{port}/", "loopback"),
        ("http://2130706433:{port}/", "loopback"),  # 127.0.0.1 as one decimal number
        ("http://0x7f.1:{port}/", "loopback"),  # inet_aton's hex shorthand
        ("http://0.0.0.0:{port}/", "unspecified"),
        ("http://169.254.169.254/latest/meta-data/", "link-local"),  # cloud metadata
        ("http://[fe80::1]/", "link-local"),
        ("http://10.0.0.1/", "private"),
        ("http://172.16.5.4/", "private"),
        ("http://192.168.1.1/", "private"),
        ("http://[fd00:ec2::254]/", "private"),  # AWS IPv6 metadata
        ("http://[::ffff:10.0.0.1]/", "private"),
        ("http://[64:ff9b::a9fe:a9fe]/", "link-local"),  # NAT64 of 169.254.169.254
        ("http://224.0.0.1/", "multicast"),
        ("http://[ff02::1]/", "multicast"),
        ("http://240.0.0.1/", "reserved"),
        ("http://100.100.100.200/", "non-public"),  # carrier NAT range (Alibaba metadata)
    ],
)
def test_internal_addresses_are_refused(origin: Origin, url: str, address_class: str) -> None:
    with pytest.raises(InvalidInput, match=f"a {address_class} address"):
        fetch(url.format(port=origin.port), connect_timeout_s=1.0)


def test_the_refusal_names_the_class_not_the_resolved_ip(origin: Origin) -> None:
    with pytest.raises(InvalidInput) as info:
        fetch(f"http://localhost:{origin.port}/x")
    assert "127.0.0.1" not in info.value.message
    assert "::1" not in info.value.message


def test_a_cidr_in_the_allow_list_lets_loopback_through(origin: Origin) -> None:
    url = origin.add("/allowed-cidr", b"ok")
    assert fetch(url, allow=("127.0.0.1/32",)) == b"ok"


def test_a_host_name_in_the_allow_list_lets_it_through(origin: Origin) -> None:
    origin.add("/allowed-host", b"ok")
    url = f"http://localhost:{origin.port}/allowed-host"
    assert fetch(url, allow=("LOCALHOST",)) == b"ok"


def test_an_allowed_cidr_does_not_allow_other_internal_addresses(origin: Origin) -> None:
    with pytest.raises(InvalidInput, match="private"):
        fetch("http://10.0.0.1/", allow=("127.0.0.0/8",))


@pytest.mark.parametrize("entry", ["10.0.0.0/33", "10.0.0.300", "fd00::/200", "bad host", "a/b"])
def test_a_malformed_allow_list_entry_fails_at_startup(entry: str) -> None:
    with pytest.raises(ValueError, match="neither a CIDR nor a host"):
        ImageFetcher(FetchPolicy(allow=(entry,)))


def test_the_connection_goes_to_the_address_the_guard_checked(origin: Origin) -> None:
    """DNS pinning: the one lookup the guard checks is the address used; Host stays the name."""
    origin.add("/pinned", b"pinned")
    lookups: list[str] = []

    async def resolve(host: str, port: int) -> list[str]:
        lookups.append(host)
        return ["127.0.0.1"]

    url = f"http://images.example:{origin.port}/pinned"
    body = asyncio.run(_fetch_all([url], resolve=resolve, allow=LOOPBACK_OK))[0]
    assert body == b"pinned"
    assert lookups == ["images.example"]
    seen = [r for r in origin.requests if r.path == "/pinned"][-1]
    assert seen.headers["Host"] == f"images.example:{origin.port}"


def test_a_host_with_any_internal_address_is_refused(origin: Origin) -> None:
    async def resolve(host: str, port: int) -> list[str]:
        return ["93.184.215.14", "127.0.0.1"]  # a rebinding trick: public and internal

    with pytest.raises(InvalidInput, match="loopback"):
        asyncio.run(_fetch_all(["http://rebind.example/"], resolve=resolve))


def test_an_unresolvable_host_is_an_upstream_error() -> None:
    async def resolve(host: str, port: int) -> list[str]:
        raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")

    with pytest.raises(UpstreamError, match="could not resolve"):
        asyncio.run(_fetch_all(["http://nowhere.example/"], resolve=resolve))


@pytest.mark.parametrize(
    "url",
    [
        "file:///etc/passwd",
        "ftp://example.com/cat.png",
        "gopher://example.com:70/_x",
        "data:image/png;base64,iVBORw0KGgo=",
        "javascript:alert(1)",
        "//example.com/no-scheme.png",
        "http:///no-host.png",
        "http://exa mple.com/",
        "http://example.com/" + "a" * 9000,
    ],
)
def test_urls_that_are_not_plain_http_are_refused(url: str) -> None:
    with pytest.raises(InvalidInput):
        fetch(url)


# -- https: the pinned IP is connected to, the URL's host name is verified -----------------------


@pytest.fixture(scope="module")
def tls_origin(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Origin, str]]:
    """An https origin with a self-signed certificate for images.example only."""
    d = tmp_path_factory.mktemp("tls")
    cert, key = str(d / "cert.pem"), str(d / "key.pem")
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=images.example",
         "-addext", "subjectAltName=DNS:images.example"],
        check=True, capture_output=True,
    )  # fmt: skip
    with Origin(tls=(cert, key)) as server:
        server.add("/cat.png", b"tls body")
        yield server, cert


async def _to_loopback(host: str, port: int) -> list[str]:
    return ["127.0.0.1"]


def test_https_verifies_the_url_host_while_connecting_to_the_pinned_ip(
    tls_origin: tuple[Origin, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    server, cert = tls_origin
    monkeypatch.setenv("SSL_CERT_FILE", cert)  # how a private CA is trusted in a deployment
    url = f"https://images.example:{server.port}/cat.png"
    body = asyncio.run(_fetch_all([url], resolve=_to_loopback, allow=LOOPBACK_OK))[0]
    assert body == b"tls body"


@pytest.mark.parametrize("host", ["other.example", "127.0.0.1"])
def test_https_refuses_a_certificate_for_another_name(
    tls_origin: tuple[Origin, str], monkeypatch: pytest.MonkeyPatch, host: str
) -> None:
    server, cert = tls_origin
    monkeypatch.setenv("SSL_CERT_FILE", cert)
    url = f"https://{host}:{server.port}/cat.png"
    with pytest.raises(UpstreamError, match="TLS certificate verification failed"):
        asyncio.run(_fetch_all([url], resolve=_to_loopback, allow=LOOPBACK_OK))


def test_https_without_the_ca_is_refused(tls_origin: tuple[Origin, str]) -> None:
    server, _ = tls_origin
    url = f"https://images.example:{server.port}/cat.png"
    with pytest.raises(UpstreamError, match="TLS certificate verification failed"):
        asyncio.run(_fetch_all([url], resolve=_to_loopback, allow=LOOPBACK_OK))


# -- redirects -------------------------------------------------------------------------------


def test_redirects_are_followed_up_to_the_cap(origin: Origin) -> None:
    origin.add("/hop/end", b"landed")
    for i in range(3):
        origin.redirect(f"/hop/{i}", f"/hop/{i + 1}" if i < 2 else "/hop/end")
    assert fetch(origin.url("/hop/0"), allow=LOOPBACK_OK, max_redirects=3) == b"landed"
    with pytest.raises(UpstreamError, match="more than 2 redirects"):
        fetch(origin.url("/hop/0"), allow=LOOPBACK_OK, max_redirects=2)


def test_a_redirect_loop_stops_at_the_cap(origin: Origin) -> None:
    origin.redirect("/loop", "/loop", status=301)
    with pytest.raises(UpstreamError, match="redirects"):
        fetch(origin.url("/loop"), allow=LOOPBACK_OK)
    assert origin.hits("/loop") == 4  # the first request and 3 redirects


@pytest.mark.parametrize(
    ("location", "reason"),
    [
        ("http://10.1.2.3/cat.png", "private"),
        ("http://169.254.169.254/latest/meta-data/iam/", "link-local"),
        ("http://[::1]:1/", "loopback"),
        ("file:///etc/passwd", "scheme 'file'"),
        ("gopher://127.0.0.1:6379/_FLUSHALL", "scheme 'gopher'"),
    ],
)
def test_every_redirect_hop_is_checked(origin: Origin, location: str, reason: str) -> None:
    url = origin.redirect(f"/to/{abs(hash(location))}", location, status=307)
    with pytest.raises(InvalidInput, match=reason):
        fetch(url, allow=("127.0.0.1/32",), connect_timeout_s=1.0)


def test_a_public_origin_cannot_redirect_into_loopback(origin: Origin) -> None:
    """The first hop is allowed by name; the redirect to a loopback IP literal is not."""
    origin.redirect("/bounce", f"http://127.0.0.1:{origin.port}/secret")

    async def resolve(host: str, port: int) -> list[str]:
        return ["127.0.0.1"]

    url = f"http://cdn.example:{origin.port}/bounce"
    with pytest.raises(InvalidInput, match="loopback"):
        asyncio.run(_fetch_all([url], resolve=resolve, allow=("cdn.example",)))


# -- byte cap --------------------------------------------------------------------------------


def test_an_endless_body_is_cut_at_the_cap_while_streaming(origin: Origin) -> None:
    url = origin.add("/endless", endless(), declare_length=None)
    cap = 2**20
    with pytest.raises(PayloadTooLarge, match="over the 1048576-byte cap"):
        fetch(url, allow=LOOPBACK_OK, max_bytes=cap, total_timeout_s=30)
    # The origin could only write what fits in the socket buffers before we hung up.
    assert origin.sent_bytes("/endless") < 64 * cap


def test_a_declared_length_over_the_cap_is_refused_before_reading(origin: Origin) -> None:
    url = origin.add("/declared", b"x" * 10, declare_length=50 * 2**20, chunk_delay_s=60)
    with pytest.raises(PayloadTooLarge, match="52428800 bytes"):
        fetch(url, allow=LOOPBACK_OK, max_bytes=2**20, total_timeout_s=30)


def test_a_body_exactly_at_the_cap_passes_and_one_byte_more_fails(origin: Origin) -> None:
    exact = origin.add("/exact", b"e" * 1000, declare_length=None)
    over = origin.add("/over", b"o" * 1001, declare_length=None)
    assert fetch(exact, allow=LOOPBACK_OK, max_bytes=1000) == b"e" * 1000
    with pytest.raises(PayloadTooLarge):
        fetch(over, allow=LOOPBACK_OK, max_bytes=1000)


def test_a_gzip_bomb_is_cut_at_the_cap(origin: Origin) -> None:
    bomb = gzip.compress(b"\0" * (16 * 2**20), compresslevel=1)  # ~70 KB on the wire
    url = origin.add("/bomb", bomb, headers={"Content-Encoding": "gzip"})
    with pytest.raises(PayloadTooLarge):
        fetch(url, allow=LOOPBACK_OK, max_bytes=2**20)


def test_an_unsupported_content_encoding_is_an_upstream_error(origin: Origin) -> None:
    url = origin.add("/br", b"\x0b\x02\x80abc\x03", headers={"Content-Encoding": "br"})
    with pytest.raises(UpstreamError, match="'br'"):
        fetch(url, allow=LOOPBACK_OK)


# -- timeouts and upstream failures -----------------------------------------------------------


def test_a_silent_origin_hits_the_total_timeout(origin: Origin) -> None:
    url = origin.add("/silent", b"late", delay_s=60)
    with pytest.raises(UpstreamTimeout, match=r"longer than 0\.3 s"):
        fetch(url, allow=LOOPBACK_OK, total_timeout_s=0.3)


def test_a_dripping_body_hits_the_total_timeout_though_no_read_times_out(origin: Origin) -> None:
    url = origin.add("/drip", b"d" * 1000, chunk_size=1, chunk_delay_s=0.02)
    with pytest.raises(UpstreamTimeout, match=r"longer than 0\.3 s"):
        fetch(url, allow=LOOPBACK_OK, read_timeout_s=5, total_timeout_s=0.3)


def test_a_stalled_read_hits_the_read_timeout(origin: Origin) -> None:
    url = origin.add("/stall", b"s", delay_s=60)
    with pytest.raises(UpstreamTimeout, match=r"timed out \(read\)"):
        fetch(url, allow=LOOPBACK_OK, read_timeout_s=0.2, total_timeout_s=30)


@pytest.mark.parametrize("status", [404, 403, 500, 503])
def test_an_origin_error_status_is_an_upstream_error(origin: Origin, status: int) -> None:
    url = origin.add(f"/status/{status}", b"nope", status=status)
    with pytest.raises(UpstreamError, match=f"answered HTTP {status}"):
        fetch(url, allow=LOOPBACK_OK)


def test_a_refused_connection_is_an_upstream_error() -> None:
    with socket.socket() as sock:  # a port nobody listens on once closed
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(UpstreamError, match="could not fetch"):
        fetch(f"http://127.0.0.1:{port}/x", allow=LOOPBACK_OK)


# -- the byte budget: fetched bytes held until decoded ----------------------------------------


def test_a_body_holds_its_size_in_the_budget_until_the_caller_is_done(origin: Origin) -> None:
    sized = origin.add("/sized", b"x" * 1000)
    chunked = origin.add("/chunked", b"y" * 300, declare_length=None)

    async def run() -> list[int]:
        budget = ByteBudget(5000, wait_s=60)
        fetcher = ImageFetcher(FetchPolicy(allow=LOOPBACK_OK, max_bytes=2000), budget=budget)
        seen = []
        try:
            async with fetcher.fetching(sized) as data:
                seen += [len(data), budget.used]
            # no declared length: the cap is held while reading, then the body's own size
            async with fetcher.fetching(chunked) as data:
                seen += [len(data), budget.used]
        finally:
            await fetcher.aclose()
        return [*seen, budget.used]

    assert asyncio.run(run()) == [1000, 1000, 300, 300, 0]


def test_a_budget_that_cannot_hold_one_image_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match=r"fetch_buffer_bytes \(100\).*max_image_bytes \(200\)"):
        ImageFetcher(FetchPolicy(max_bytes=200), budget=ByteBudget(100))


def test_the_budget_serves_the_oldest_request_first_and_refuses_after_its_wait() -> None:
    async def run() -> list[str]:
        budget = ByteBudget(10, wait_s=60)
        order: list[str] = []

        async def take(name: str, size: int, since: float) -> None:
            hold = await budget.take(size, since)
            order.append(name)
            await asyncio.sleep(0)
            hold.release()

        first = await budget.take(10, since=0)
        late = asyncio.create_task(take("late", 6, since=2))
        await asyncio.sleep(0)  # "late" asked first...
        early = asyncio.create_task(take("early", 6, since=1))  # ...for a newer request
        await asyncio.sleep(0)
        first.release()
        await asyncio.gather(late, early)
        # nothing frees within a refusing budget's wait: 503 with Retry-After
        stuck = ByteBudget(10, wait_s=0.05)
        held = await stuck.take(10, since=0)
        with pytest.raises(Overloaded, match="hold 10 of 10 bytes") as refused:
            await stuck.take(1, since=1)
        assert refused.value.headers == {"Retry-After": "1"}
        held.release()
        return [*order, str(budget.used), str(stuck.used)]

    assert asyncio.run(run()) == ["early", "late", "0", "0"]


def test_a_download_that_gives_up_waiting_leaves_the_budget_as_it_was() -> None:
    async def run() -> tuple[int, int]:
        budget = ByteBudget(10, wait_s=60)
        held = await budget.take(8, since=0)
        waiting = asyncio.create_task(budget.take(5, since=1))
        await asyncio.sleep(0)
        waiting.cancel()  # the request went away
        with pytest.raises(asyncio.CancelledError):
            await waiting
        during = budget.used
        held.release()
        after = await budget.take(10, since=2)  # the cancelled waiter is not served
        return during, after.size

    assert asyncio.run(run()) == (8, 10)
