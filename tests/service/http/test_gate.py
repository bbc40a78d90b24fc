"""`clipserve gate` in front of a real server that is down, then up: 503 + Retry-After at once
while no server is ready (its connections refused or dropped), every request and answer passed
on unchanged once one is; the API key checked before anything counts toward waking; a client's
disconnect passed upstream; the raw path passed on; kept-alive connections to the server never
reused as the server closes them."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from clipserve.bench.scrape import MetricsPage
from clipserve.metrics import GATE_OUTCOMES, GATE_WAKING
from clipserve_client import Client

from tests.support.gate import Blackhole, DroppingUpstream, GateProcess
from tests.support.imports import modules_loaded_by
from tests.support.pictures import png_b64
from tests.support.polling import eventually
from tests.support.server import TINY, Server, free_port, start_server

RETRY_AFTER_S = 1
KEYS = ("first-key", "second-key")


@pytest.fixture
def backend_port() -> int:
    return free_port()


@pytest.fixture
def gate(backend_port: int) -> Iterator[GateProcess]:
    running = GateProcess(f"http://127.0.0.1:{backend_port}", "--retry-after-s", str(RETRY_AFTER_S))
    yield running
    running.stop()


def test_no_server_ready_answers_503_with_retry_after_at_once(gate: GateProcess) -> None:
    assert gate.requests() == dict.fromkeys(GATE_OUTCOMES, 0)
    t0 = time.monotonic()
    r = httpx.post(f"{gate.url}/encode", json=[{"text": "a dog"}], timeout=10)
    took = time.monotonic() - t0
    assert r.status_code == 503
    assert r.headers["retry-after"] == str(RETRY_AFTER_S)
    detail = r.json()["detail"]
    assert "no server is ready" in detail and "scaled to zero" in detail
    assert took < 5  # answered, not held until some time limit
    assert gate.requests()["unavailable"] == 1
    # Its own health and metrics, never the (missing) server's.
    assert httpx.get(f"{gate.url}/readyz", timeout=5).status_code == 200


@pytest.mark.slow
def test_once_a_server_is_up_requests_and_answers_pass_unchanged(
    gate: GateProcess, backend_port: int
) -> None:
    server = start_server(model=TINY, port=backend_port)
    try:
        # The gate passes requests on once its probe (every half second) has seen the server.
        eventually(lambda: gate.servers_reachable() == 1, "the gate to see the server", 30)
        direct, through = httpx.Client(base_url=server.url), httpx.Client(base_url=gate.url)
        body = [{"text": "a dog"}, {"img_blob": png_b64()}]
        a, b = direct.post("/encode", json=body), through.post("/encode", json=body)
        assert (b.status_code, b.headers["x-clip-model"]) == (200, TINY)
        assert b.json() == a.json()
        # A binary answer (Accept: .npy) too, byte for byte with the headers that describe it.
        npy = {"Accept": "application/x-npy"}
        a, b = (
            direct.post("/encode", json=body, headers=npy),
            through.post("/encode", json=body, headers=npy),
        )
        assert (b.status_code, b.headers["content-type"]) == (200, "application/x-npy")
        assert b.content == a.content
        assert b.headers["x-embedding-shape"] == a.headers["x-embedding-shape"] == "2,32"
        # Errors come back as the server wrote them, with their status and detail.
        bad = through.post("/encode", json=[{"img_blob": "not base64!"}])
        assert (
            bad.status_code == 400
            and bad.json() == direct.post("/encode", json=[{"img_blob": "not base64!"}]).json()
        )
        # Query strings and other methods pass too.
        models = through.get("/models", params={"available": "true"})
        assert (
            models.status_code == 200
            and models.json() == direct.get("/models", params={"available": "true"}).json()
        )
        # /metrics is the gate's own; the server's stays on the server.
        assert "clipserve_queue_depth" not in through.get("/metrics").text
        assert gate.requests()["proxied"] == 4
    finally:
        server.stop()
    # The server gone again: 503 once more, nothing held.
    assert httpx.post(f"{gate.url}/encode", json=[{"text": "a"}], timeout=10).status_code == 503


def test_where_connections_are_dropped_not_refused_the_gate_still_answers_503(
    backend_port: int,
) -> None:
    # Many NetworkPolicy plugins drop what goes to a Service without endpoints: a connection
    # is never refused, only never made. The gate must still answer 503 + Retry-After (no
    # request reached a server), and at once once its probe has seen no server take one.
    upstream = DroppingUpstream(backend_port)
    gate = GateProcess(upstream.url, "--retry-after-s", str(RETRY_AFTER_S))
    hole = None
    try:
        eventually(lambda: gate.servers_reachable() == 1, "the probe to find the server", 30)
        upstream.close()
        hole = Blackhole(backend_port)
        # Sent at once: the gate still takes the servers for reachable and tries to connect.
        r = httpx.post(f"{gate.url}/encode", json=[{"text": "a dog"}], timeout=30)
        assert r.status_code == 503 and r.headers["retry-after"] == str(RETRY_AFTER_S), r.text
        assert gate.servers_reachable() == 0
        t0 = time.monotonic()
        r = httpx.post(f"{gate.url}/encode", json=[{"text": "a dog"}], timeout=30)
        took = time.monotonic() - t0
        assert r.status_code == 503 and "no server is ready" in r.json()["detail"]
        assert took < 2  # not tried: a connect is given 5 s before it counts as not made
        assert gate.requests()["unavailable"] == 2 and gate.requests()["error"] == 0
        # A server takes connections again: the probe finds it and requests pass.
        hole.close()
        upstream = DroppingUpstream(backend_port)
        eventually(lambda: gate.servers_reachable() == 1, "the probe to find the server", 30)
        r = httpx.get(f"{gate.url}/models", timeout=30)
        assert (r.status_code, r.text) == (200, "ok")
    finally:
        gate.stop()
        upstream.close()
        if hole is not None:
            hole.close()


@pytest.mark.slow
def test_the_client_waits_out_a_cold_start_behind_the_gate(
    gate: GateProcess, backend_port: int
) -> None:
    # The first request meets no server; the client retries after each Retry-After until the
    # server that starts meanwhile answers.
    started: list[Server] = []
    starter = threading.Timer(
        2, lambda: started.append(start_server(model=TINY, port=backend_port, wait_ready=False))
    )
    starter.start()
    try:
        with Client(gate.url, retries=600, max_retry_wait_s=RETRY_AFTER_S) as clip:
            vectors = clip.encode(texts=["a dog"])
        assert vectors.shape[0] == 1
        counts = gate.requests()
        assert counts["unavailable"] >= 1 and counts["proxied"] >= 1 and counts["error"] == 0
    finally:
        starter.join()
        for server in started:
            server.stop()


def _woken(gate: GateProcess) -> float:
    """Requests that count toward KEDA's wake-up query (the chart's, tests/chart)."""
    return sum(v for k, v in gate.requests().items() if k in GATE_WAKING)


@pytest.fixture(scope="module")
def key_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("keys") / "api-keys"
    path.write_text(f"{KEYS[0]}\n\n  {KEYS[1]}  \n")  # the server's format: one per line
    return path


def _keyed_gate(backend: str, key_file: Path) -> GateProcess:
    # The keys as the chart gives them to the gate: the server's variable, a mounted file.
    return GateProcess(
        backend,
        "--retry-after-s",
        str(RETRY_AFTER_S),
        env={"CLIPSERVE_API_KEY_FILE": str(key_file)},
    )


def test_without_a_valid_key_a_cold_gate_answers_401_and_wakes_nothing(key_file: Path) -> None:
    gate = _keyed_gate(f"http://127.0.0.1:{free_port()}", key_file)
    try:
        for headers in ({}, {"authorization": "Bearer wrong"}, {"authorization": KEYS[0]}):
            r = httpx.post(f"{gate.url}/encode", json=[{"text": "a"}], headers=headers)
            assert r.status_code == 401, r.text  # not the 503 that would start a GPU pod
            assert r.json() == {"status_code": 401, "detail": "missing or invalid API key"}
            assert r.headers["www-authenticate"] == 'Bearer realm="clipserve"'
        # A page passes without a key (it asks for the key itself), but wakes nothing either.
        assert httpx.get(f"{gate.url}/").status_code == 503
        assert _woken(gate) == 0
        assert gate.requests()["unauthorized"] == 3 and gate.requests()["page"] == 1
        # Either key of the file (blank lines skipped, spaces trimmed) is a request that wakes.
        for key in KEYS:
            r = httpx.post(
                f"{gate.url}/encode",
                json=[{"text": "a"}],
                headers={"authorization": f"Bearer {key}"},
            )
            assert r.status_code == 503 and r.headers["retry-after"] == str(RETRY_AFTER_S)
        assert _woken(gate) == 2 == gate.requests()["unavailable"]
    finally:
        gate.stop()


def test_a_gate_whose_key_file_holds_no_key_refuses_to_start(tmp_path: Path) -> None:
    # As the server (issue 25 item 4): an empty Secret must not mean that every request wakes.
    blank = tmp_path / "api-keys"
    blank.write_text("\n  \n")
    cmd = [sys.executable, "-m", "clipserve.cli", "gate", "--backend", "http://127.0.0.1:1"]
    cmd += ["--port", str(free_port()), "--api-key-file", str(blank)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2, proc.stderr
    assert "holds no API key" in proc.stderr and "Traceback" not in proc.stderr


@pytest.fixture(scope="module")
def keyed(key_file: Path) -> Iterator[tuple[Server, GateProcess]]:
    """A server with API keys behind a gate with the same keys."""
    server = start_server(model=TINY, env={"CLIPSERVE_API_KEY_FILE": str(key_file)})
    gate = _keyed_gate(server.url, key_file)
    yield server, gate
    gate.stop()
    server.stop()


@pytest.mark.slow
def test_the_gates_401_is_the_servers_and_pages_pass_without_waking(
    keyed: tuple[Server, GateProcess],
) -> None:
    server, gate = keyed
    before = gate.requests()
    for path, body in (("/encode", [{"text": "a"}]), ("/v1/embeddings", {"input": "a"})):
        direct = httpx.post(server.url + path, json=body)
        through = httpx.post(gate.url + path, json=body)
        assert (through.status_code, through.content) == (401, direct.content), path
        assert through.headers["www-authenticate"] == direct.headers["www-authenticate"]
    # The server's pages answer without a key through the gate too.
    for path in ("/", "/schema/openapi.json", "/static/playground/playground.js"):
        direct, through = httpx.get(server.url + path), httpx.get(gate.url + path)
        assert through.status_code == direct.status_code == 200, path
        assert through.content == direct.content, path
    after = gate.requests()
    assert after["unauthorized"] - before["unauthorized"] == 2
    assert after["page"] - before["page"] == 3
    assert _woken(gate) == sum(before[k] for k in GATE_WAKING)  # none of them wakes
    keyed_call = httpx.post(
        gate.url + "/encode", json=[{"text": "a"}], headers={"authorization": f"Bearer {KEYS[1]}"}
    )
    assert keyed_call.status_code == 200
    assert gate.requests()["proxied"] == before["proxied"] + 1


@pytest.mark.slow
def test_the_raw_path_reaches_the_server(keyed: tuple[Server, GateProcess]) -> None:
    server, gate = keyed
    # %3F is a character of the file name, not the start of a query: the server must say it
    # has no such file, never serve playground.js with a query `v=1`.
    path = "/static/playground/playground.js%3Fv=1"
    direct, through = httpx.get(server.url + path), httpx.get(gate.url + path)
    assert direct.status_code == 404 and "playground.js?v=1" in direct.text
    assert (through.status_code, through.json()) == (404, direct.json())
    # A control character stays escaped (decoded, it made the gate's URL invalid: 500).
    auth = {"authorization": f"Bearer {KEYS[0]}"}
    path = "/v1/models/n%10x"
    direct, through = (
        httpx.get(server.url + path, headers=auth),
        httpx.get(gate.url + path, headers=auth),
    )
    assert direct.status_code == 404 and (through.status_code, through.content) == (
        404,
        direct.content,
    )
    # A real query still passes as a query.
    query = httpx.get(gate.url + "/static/playground/playground.js", params={"v": "1"})
    assert query.status_code == 200


@pytest.mark.slow
def test_kept_alive_server_connections_expire_before_the_server_closes_them(
    keyed: tuple[Server, GateProcess],
) -> None:
    _, gate = keyed
    auth = {"authorization": f"Bearer {KEYS[0]}"}
    body = [{"text": "a dog"}]
    assert httpx.post(gate.url + "/encode", json=body, headers=auth).status_code == 200
    (last,) = gate.upstream_ports()
    # uvicorn closes a connection idle for 5 s; the gate must never send on one idle that long
    # (a POST sent as the server closes its connection is lost: 502), so each request after a
    # pause around 5 s goes out on a connection of its own. Each call comes on a new client
    # connection: the test client's own connection to the gate would meet the same race.
    for pause in (4.5, 4.9, 5.0, 5.1):
        time.sleep(pause)
        r = httpx.post(gate.url + "/encode", json=body, headers=auth)
        assert r.status_code == 200, (pause, r.text)
        (port,) = gate.upstream_ports()
        assert port != last, f"a connection idle for {pause} s was used again"
        last = port
    assert gate.requests()["error"] == 0


def test_a_request_lost_on_a_kept_alive_connection_is_sent_again_only_when_safe() -> None:
    upstream = DroppingUpstream()
    gate = GateProcess(upstream.url)
    try:
        with httpx.Client(base_url=gate.url) as client:
            assert client.get("/a").status_code == 200  # connection 1, kept alive
            # Sent on connection 1, which closes unanswered: a GET changes nothing, so the gate
            # sends it again, on a new connection.
            assert client.get("/b").status_code == 200
            # Sent on connection 2, which closes unanswered after reading the body: the body
            # was taken from the client and the server may have acted on it: 502, never twice.
            r = client.post("/c", content=b"x" * 100)
            assert r.status_code == 502 and "connection failed" in r.json()["detail"]
        # The gate's own probes of /readyz come on connections of their own, in between.
        seen = [(n, m, p) for n, m, p in upstream.seen if p != "/readyz"]
        assert [(m, p) for _, m, p in seen] == [
            ("GET", "/a"),
            ("GET", "/b"),
            ("GET", "/b"),
            ("POST", "/c"),
        ]
        first, second = seen[0][0], seen[2][0]
        assert [n for n, _, _ in seen] == [first, first, second, second] and first != second
        assert gate.requests()["proxied"] == 2 and gate.requests()["error"] == 1
    finally:
        gate.stop()
        upstream.close()


def _items_done(url: str) -> float:
    return MetricsPage(httpx.get(url + "/metrics").text).value("clipserve_items_total")


@pytest.mark.slow
def test_a_client_that_leaves_the_gate_has_its_request_cancelled_upstream() -> None:
    # As tests/service/http/test_hardening.py's direct test: ViT-B-32 at batch size 1 (~30 ms a
    # pass here) makes 200 items several seconds of work, far more than the client's patience.
    total = 200
    server = start_server("--max-batch-size", "1", "--max-wait-ms", "0", model="ViT-B-32:random")
    gate = GateProcess(server.url)
    try:
        before = _items_done(server.url)
        texts = [{"text": f"t{i}"} for i in range(total)]
        with pytest.raises(httpx.ReadTimeout), httpx.Client(timeout=0.5) as impatient:
            impatient.post(gate.url + "/encode", json=texts)
        # Queued after what is left of the abandoned request: once it is answered, the rest
        # of that request was either computed or dropped.
        nxt = httpx.post(gate.url + "/encode", json=[{"text": "next"}], timeout=120)
        assert nxt.status_code == 200
        computed = _items_done(server.url) - before - 1
        outcomes = gate.requests()
    finally:
        gate.stop()
        server.stop()
    assert computed < total / 2, computed  # dropped upstream, not computed for nobody
    assert (outcomes["cancelled"], outcomes["proxied"]) == (1, 1)


def test_the_gate_starts_without_torch_or_litestar() -> None:
    # It renders the server's error bodies (errors.encoded) without the server's stack: a gate
    # pod starts in a second and stays small.
    assert modules_loaded_by("clipserve.gate", ("torch", "litestar", "open_clip")) == []
