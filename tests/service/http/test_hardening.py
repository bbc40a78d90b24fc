"""Hostile input, limits, auth, liveness and graceful drain, against real server processes."""

from __future__ import annotations

import signal
import threading
import time

import httpx
import pytest
from clipserve.bench.scrape import MetricsPage

from tests.support.memory import MB, measured
from tests.support.origin import Origin
from tests.support.pictures import png_b64, png_bytes
from tests.support.server import Server, start_server


@pytest.fixture(scope="module")
def origin():
    with Origin() as o:
        o.add("/cat.png", png_bytes(), headers={"content-type": "image/png"})
        o.redirect("/to-cat", "/cat.png")
        o.add("/missing.png", b"gone", status=404)
        o.add("/slow.png", png_bytes(), delay_s=30)
        o.add("/big.png", b"\x89PNG" + b"\0" * 3_000_000)
        yield o


@pytest.fixture(scope="module")
def allowing(origin):
    """A server whose SSRF guard lets it reach the test origin on loopback, with small caps."""
    srv = start_server(
        "--fetch-allow",
        "127.0.0.1/32",
        "--fetch-timeout-s",
        "2",
        "--max-image-bytes",
        "1000000",
        "--max-items",
        "8",
        "--max-text-chars",
        "500",
        "--max-body-bytes",
        "2000000",
    )
    yield srv
    srv.stop()


def test_an_allowed_url_is_fetched_and_embedded_like_the_same_bytes(allowing, origin):
    with allowing.client() as c:
        by_url = c.post(
            "/encode",
            json=[{"img_uri": origin.url("/cat.png")}, {"img_uri": origin.url("/to-cat")}],
        )
        by_blob = c.post("/encode", json=[{"img_blob": png_b64()}])
    assert by_url.status_code == 200, by_url.text
    assert by_url.json()[0] == pytest.approx(by_blob.json()[0], abs=1e-6)
    assert by_url.json()[1] == pytest.approx(by_blob.json()[0], abs=1e-6)


@pytest.mark.parametrize(
    ("path", "status", "words"),
    [
        ("/missing.png", 502, ["items[0].img_uri", "404"]),
        ("/slow.png", 504, ["items[0].img_uri"]),
        ("/big.png", 413, ["items[0].img_uri"]),
    ],
)
def test_upstream_failures_are_502_504_or_413_naming_the_item(
    allowing, origin, path, status, words
):
    start = time.monotonic()
    with allowing.client() as c:
        r = c.post("/encode", json=[{"img_uri": origin.url(path)}])
    assert r.status_code == status, r.text
    for w in words:
        assert w in r.json()["detail"]
    assert time.monotonic() - start < 20  # bounded by the fetch timeout, not the origin


def test_loopback_urls_are_refused_by_default(server: Server, origin):
    hits_before = origin.hits("/cat.png")
    with server.client() as c:
        r = c.post("/encode", json=[{"text": "x"}, {"img_uri": origin.url("/cat.png")}])
        meta = c.post("/encode", json=[{"img_uri": "http://169.254.169.254/latest/meta-data"}])
        scheme = c.post("/encode", json=[{"img_uri": "file:///etc/passwd"}])
    assert r.status_code == 400 and "items[1].img_uri" in r.json()["detail"]
    assert meta.status_code == 400 and "link-local" in meta.json()["detail"]
    assert scheme.status_code == 400 and "items[0].img_uri" in scheme.json()["detail"]
    assert origin.hits("/cat.png") == hits_before  # refused before connecting


def test_request_limits_answer_413_naming_the_limit(allowing):
    with allowing.client() as c:
        many = c.post("/encode", json=[{"text": "a"}] * 9)
        long_text = c.post("/encode", json=[{"text": "a" * 501}])
        big_body = c.post("/encode", json=[{"text": "a" * 2_100_000}])
        rank = c.post(
            "/rank", json={"queries": [{"text": "a"}] * 5, "candidates": [{"text": "b"}] * 5}
        )
        ok = c.post("/encode", json=[{"text": "a " * 200}])  # 200 tokens > 77: truncated, fine
    assert many.status_code == 413 and "limit is 8" in many.json()["detail"]
    assert long_text.status_code == 413 and "items[0].text" in long_text.json()["detail"]
    assert big_body.status_code == 413
    assert rank.status_code == 413 and "queries+candidates" in rank.json()["detail"]
    assert ok.status_code == 200


JSON = {"content-type": "application/json"}


def test_a_body_of_millions_of_tiny_values_is_refused_before_it_is_decoded():
    """64 MiB of `{},` is 22 million objects once decoded (+3.2 GB of RSS without the bound):
    counted and refused first, the server grows by little more than the body, and a body
    whose many commas are inside its texts is still served."""
    srv = start_server("--max-items", "2")  # at most 2 x 1024 + 4096 values
    try:
        tiny = b"[" + b"{}," * (64 * 2**20 // 3 - 1) + b"{}]"
        url = f"{srv.url}/encode"
        r, growth = measured(srv, lambda: httpx.post(url, content=tiny, headers=JSON, timeout=120))
        print(f"64 MiB of {{}}: HTTP {r.status_code}, server {growth}")
        assert r.status_code == 413, r.text
        assert "more than 6144 JSON values" in r.json()["detail"]
        assert growth.peak_growth < 400 * MB, str(growth)  # the body itself, twice at most
        commas = [{"text": "," * 9_000}, {"text": "a, b, " * 1_500}]  # 13,500 commas
        assert httpx.post(url, json=commas, timeout=60).status_code == 200
        few = b"[" + b"{}," * 7_000 + b"{}]"  # 7,000 values: over the bound on every route
        openai = httpx.post(f"{srv.url}/v1/embeddings", content=few, headers=JSON, timeout=60)
        assert openai.status_code == 413 and "JSON values" in openai.json()["error"]["message"]
    finally:
        srv.stop()


@pytest.mark.parametrize("path", ["/encode", "/v1/embeddings", "/v2/embed", "/rank"])
def test_json_nested_too_deeply_is_a_400_in_the_routes_shape(server: Server, path: str):
    deep = b"[" * 200_000 + b"]" * 200_000
    r = httpx.post(f"{server.url}{path}", content=deep, headers=JSON, timeout=60)
    assert r.status_code == 400, r.text
    body = r.json()
    if path.startswith("/v1/"):
        message = body["error"]["message"]
    elif path.startswith("/v2/"):
        message = body["message"]
    else:
        message = body["detail"]
    assert message.startswith("request body is not valid JSON: nested too deeply"), message


def test_api_keys_guard_everything_but_the_open_paths(tmp_path):
    keyfile = tmp_path / "keys"
    keyfile.write_text("from-file\n\n")
    srv = start_server("--api-key-file", str(keyfile), env={"CLIPSERVE_API_KEY": "k1,k2"})
    try:
        with srv.client() as c:
            none = c.post("/encode", json=[{"text": "a"}])
            wrong = c.post(
                "/encode", json=[{"text": "a"}], headers={"authorization": "Bearer nope"}
            )
            basic = c.get("/models", headers={"authorization": "Basic azE6"})
            oks = [
                c.post("/encode", json=[{"text": "a"}], headers={"authorization": f"Bearer {k}"})
                for k in ("k1", "k2", "from-file")
            ]
            # litestar's auth middleware lets OPTIONS through by default; here it must not
            options = c.options("/encode")
            openai = c.post("/v1/embeddings", json={"input": "a", "model": "x"})
            open_paths = [c.get(p) for p in ("/healthz", "/readyz", "/metrics")]
            page = MetricsPage(c.get("/metrics").text)
    finally:
        srv.stop()
    for r in (none, wrong, basic, options):
        assert r.status_code == 401 and r.headers["www-authenticate"].startswith("Bearer")
        assert r.json() == {"status_code": 401, "detail": "missing or invalid API key"}
        assert "x-clip-model" not in r.headers  # nothing about the server without a key
    # the same error, in the shape OpenAI's SDKs parse
    assert openai.status_code == 401 and openai.headers["www-authenticate"].startswith("Bearer")
    assert openai.json()["error"]["code"] == "invalid_api_key"
    assert [r.status_code for r in oks] == [200, 200, 200]
    assert [r.status_code for r in open_paths] == [200, 200, 200]
    # refused requests are counted as what the client got, not as failures of the server
    requests = "clipserve_requests_total"
    assert page.value(requests, endpoint="/encode", status="401") == 3  # none, wrong, OPTIONS
    assert page.value(requests, endpoint="/models", status="401") == 1
    assert page.value(requests, endpoint="/v1/embeddings", status="401") == 1
    assert not page.by("status", requests).get("500")


@pytest.mark.slow
def test_sigterm_under_load_drains_without_cutting_a_response():
    srv = start_server("--drain-grace-s", "2", "--drain-timeout-s", "15", "--max-wait-ms", "20")
    outcomes: list[str] = []
    stop = threading.Event()

    def hammer() -> None:
        body = [{"text": "a photo"}, {"img_blob": png_b64()}]
        with httpx.Client(base_url=srv.url, timeout=30) as c:
            while not stop.is_set():
                got_status = False
                try:
                    with c.stream("POST", "/encode", json=body) as r:
                        got_status = True
                        r.read()
                        ok = r.status_code == 200 and len(r.json()) == 2
                        outcomes.append("200" if ok else str(r.status_code))
                except httpx.TransportError:
                    if got_status:  # a response that started must finish
                        outcomes.append("cut-mid-body")
                        return
                    # refused after the listener closed, or a keep-alive connection closed as
                    # the request went out: it never got a response code, which is allowed
                    outcomes.append("no-response")
                    time.sleep(0.05)

    workers = [threading.Thread(target=hammer) for _ in range(6)]
    for w in workers:
        w.start()
    time.sleep(2)
    sent_at = time.monotonic()
    srv.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    ready = httpx.get(srv.url + "/readyz", timeout=5)
    served_during_grace = httpx.post(srv.url + "/encode", json=[{"text": "late"}], timeout=30)
    code = srv.proc.wait(30)
    exited_after = time.monotonic() - sent_at
    stop.set()
    for w in workers:
        w.join(30)
    assert ready.status_code == 503 and ready.json()["detail"] == "shutting down"
    assert served_during_grace.status_code == 200
    assert code == 0 and exited_after < 2 + 15
    assert outcomes.count("200") > 10
    assert set(outcomes) <= {"200", "503", "no-response"}, set(outcomes)
    assert "Traceback" not in srv.log()


def _items_done(client: httpx.Client) -> float:
    return MetricsPage(client.get("/metrics").text).value("clipserve_items_total")


def test_a_client_that_disconnects_has_its_queued_items_dropped():
    # ViT-B-32 at batch size 1 (~30 ms a pass here): 200 items are several seconds of work,
    # far more than the client's patience, so most are still queued when it disconnects
    total = 200
    srv = start_server("--max-batch-size", "1", "--max-wait-ms", "0", model="ViT-B-32:random")
    try:
        with srv.client() as c:
            before = _items_done(c)
            with pytest.raises(httpx.ReadTimeout), httpx.Client(timeout=0.5) as impatient:
                impatient.post(srv.url + "/encode", json=[{"text": f"t{i}"} for i in range(total)])
            time.sleep(1.0)
            settled = _items_done(c)
            time.sleep(1.0)
            assert c.post("/encode", json=[{"text": "next"}]).status_code == 200
            after = _items_done(c)
    finally:
        srv.stop()
    computed = settled - before
    assert computed < total / 2, computed  # the rest were dropped, not computed for nobody
    assert after == settled + 1  # nothing of the abandoned request ran in the background
