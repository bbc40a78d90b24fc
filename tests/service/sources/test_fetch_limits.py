"""img_uri downloads are bounded per request (--fetch-concurrency) and across requests
(--fetch-buffer-bytes): real server processes fetching large images from a real local origin."""

from __future__ import annotations

import concurrent.futures as cf
import io
import random
import threading
from collections.abc import Callable, Iterator

import httpx
import pytest
from PIL import Image

from tests.support.memory import MB, measured
from tests.support.origin import Origin
from tests.support.polling import eventually
from tests.support.server import Server, start_server


def noise_png(side: int, seed: int = 0) -> bytes:
    """A PNG that does not compress: about 3 x side^2 bytes."""
    pixels = random.Random(seed).randbytes(side * side * 3)
    buf = io.BytesIO()
    Image.frombytes("RGB", (side, side), pixels).save(buf, format="PNG", compress_level=1)
    return buf.getvalue()


BIG = noise_png(1000)  # ~3 MB


def held_body(data: bytes, release: threading.Event) -> Callable[[], Iterator[bytes]]:
    """A body whose first 64 KiB go out at once and the rest once `release` is set."""

    def body() -> Iterator[bytes]:
        yield data[:65536]
        release.wait(60)
        yield data[65536:]

    return body


@pytest.fixture(scope="module")
def origin() -> Iterator[Origin]:
    with Origin() as o:
        o.add("/slow.png", BIG, content_type="image/png", delay_s=0.5)
        o.add("/big.png", BIG, content_type="image/png")
        yield o


def serve(*args: str) -> Server:
    """A server that may fetch from the loopback origin, with these limits."""
    return start_server("--fetch-allow", "127.0.0.1/32", "--max-items", "64", *args)


@pytest.mark.parametrize("route", ["/encode", "/rank"])
def test_a_request_fetches_at_most_fetch_concurrency_urls_at_once(origin: Origin, route: str):
    urls = [{"img_uri": origin.url(f"/slow.png?i={i}")} for i in range(12)]
    body = urls if route == "/encode" else {"queries": urls[:6], "candidates": urls[6:]}
    srv = serve("--fetch-concurrency", "3")
    try:
        origin.peak_in_flight = 0
        with srv.client() as c:
            r = c.post(route, json=body)
        assert r.status_code == 200, r.text
        # Every URL answers only after 0.5 s, so fetches started together overlap at the
        # origin: all 12 did before the bound; now at most 3 (and more than one: still parallel).
        assert 1 < origin.peak_in_flight <= 3, origin.peak_in_flight
        assert origin.hits("/slow.png") >= 12
    finally:
        srv.stop()


def test_images_awaiting_decoding_past_the_byte_budget_get_503_with_retry_after(
    origin: Origin,
):
    release = threading.Event()
    origin.add("/held.png", held_body(BIG, release), declare_length=len(BIG))
    # Room for one image of BIG's size, not two.
    srv = serve("--max-image-bytes", "4000000", "--fetch-buffer-bytes", "4000000")
    try:
        with srv.client() as c, cf.ThreadPoolExecutor(1) as pool:
            first = pool.submit(c.post, "/encode", json=[{"img_uri": origin.url("/held.png")}])
            # The first request's download holds its declared size from its headers on.
            eventually(lambda: origin.sent_bytes("/held.png") >= 65536, "the held download")
            refused = c.post("/encode", json=[{"img_uri": origin.url("/big.png?refused")}])
            release.set()
            assert first.result().status_code == 200, first.result().text
            again = c.post("/encode", json=[{"img_uri": origin.url("/big.png?again")}])
    finally:
        release.set()
        srv.stop()
    assert refused.status_code == 503, refused.text
    assert refused.headers["Retry-After"] == "1"
    detail = refused.json()["detail"]
    assert "items[0].img_uri" in detail and "--fetch-buffer-bytes" in detail, detail
    assert again.status_code == 200, again.text  # the budget was given back


def test_many_large_images_at_once_keep_the_server_within_its_byte_budget(origin: Origin):
    # 4 requests of 64 URLs of 3 MB: 768 MB of images, decoded one at a time (one preprocess
    # thread, the embedding cache off). Before the bounds every URL was fetched at once and
    # the bytes waited for the decoder: the server grew by ~700 MB and every request got 504.
    srv = serve(
        "--fetch-buffer-bytes", "16000000", "--max-image-bytes", "4000000",
        "--preprocess-threads", "1", "--cache-mb", "0",
    )  # fmt: skip
    urls = [[{"img_uri": origin.url(f"/big.png?r={r}&i={i}")} for i in range(64)] for r in range(4)]
    try:
        with srv.client() as c:
            # A first request of the same size grows the pools and arenas that serving takes.
            warm = c.post(
                "/encode", json=[{"img_uri": origin.url(f"/big.png?w={i}")} for i in range(64)]
            )
            assert warm.status_code == 200, warm.text

            def burst() -> list[httpx.Response]:
                with cf.ThreadPoolExecutor(4) as pool:
                    return list(pool.map(lambda body: c.post("/encode", json=body), urls))

            answers, growth = measured(srv, burst)
    finally:
        srv.stop()
    codes = [r.status_code for r in answers]
    print(f"4 x 64 URLs of {len(BIG) / MB:.1f} MB: HTTP {codes}, server {growth}")
    # The oldest request's downloads go first: it is served, the excess refused to retry.
    assert 200 in codes and set(codes) <= {200, 503}, [r.text for r in answers]
    assert all(r.headers.get("Retry-After") for r in answers if r.status_code == 503)
    # Bounded: the one request served needs ~60-110 MB of its own here (a lone 64-URL request
    # grows the server as much), the fetch budget 16 MB; not the 768 MB asked for.
    assert growth.peak_growth < 200 * MB, str(growth)
