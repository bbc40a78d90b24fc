"""`clipserve gate` in front of a real server that is down, then up: 503 + Retry-After at once
while no server is ready, every request and answer passed on unchanged once one is."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from clipserve.client import Client

from tests.service.gate import GateProcess
from tests.service.pictures import png_b64
from tests.service.server import TINY, Server, free_port, start_server

RETRY_AFTER_S = 1


@pytest.fixture
def backend_port() -> int:
    return free_port()


@pytest.fixture
def gate(backend_port: int) -> Iterator[GateProcess]:
    running = GateProcess(f"http://127.0.0.1:{backend_port}", "--retry-after-s", str(RETRY_AFTER_S))
    yield running
    running.stop()


def test_no_server_ready_answers_503_with_retry_after_at_once(gate: GateProcess) -> None:
    assert gate.requests() == {"proxied": 0, "unavailable": 0, "error": 0}
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
        direct, through = httpx.Client(base_url=server.url), httpx.Client(base_url=gate.url)
        body = [{"text": "a dog"}, {"img_blob": png_b64()}]
        a, b = direct.post("/encode", json=body), through.post("/encode", json=body)
        assert (b.status_code, b.headers["x-clip-model"]) == (200, TINY)
        assert b.json() == a.json()
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
        assert gate.requests()["proxied"] == 3
    finally:
        server.stop()
    # The server gone again: 503 once more, nothing held.
    assert httpx.post(f"{gate.url}/encode", json=[{"text": "a"}], timeout=10).status_code == 503


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
