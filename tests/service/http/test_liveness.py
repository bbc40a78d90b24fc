"""A dead compute thread (the real app, in-process) and a device that keeps failing (a real
server process whose GPU breaks on demand) turn /healthz and /readyz red."""

from __future__ import annotations

import os
import time
from pathlib import Path

from clipserve.bench.scrape import MetricsPage
from clipserve.http.app import create_app
from clipserve.settings import Settings
from litestar.testing import TestClient

from tests.support.server import BROKEN_GPU, MODEL_CONFIGS, TINY, start_server

# Its sitecustomize breaks the child's forward passes while a flag file exists.
ILLEGAL_ACCESS = "CUDA error: an illegal memory access was encountered"


def test_a_dead_compute_thread_fails_liveness_and_readiness():
    app = create_app(Settings(model=(TINY,), model_config_dir=str(MODEL_CONFIGS)))
    with TestClient(app) as client:
        deadline = time.monotonic() + 60
        while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("/healthz").status_code == 200
        engine = app.dependencies["engine"].dependency()  # what the handlers are given
        batcher = engine.batchers[TINY]

        # Simulate a bug that escapes the compute loop (the loop never raises by design).
        def broken(worker):
            raise RuntimeError("bug in the batch loop")

        batcher._next_batch = broken
        with batcher._cond:
            batcher._cond.notify_all()
        # the thread is parked inside the old loop call: one more item brings it to the bug
        client.post("/encode", json=[{"text": "wake the thread"}])
        batcher._threads[0].join(5)
        health, ready = client.get("/healthz"), client.get("/readyz")
        after = client.post("/encode", json=[{"text": "after"}])
    assert health.status_code == 503 and health.json()["status"] == "dead"
    assert ready.status_code == 503 and "compute thread" in ready.json()["detail"]
    assert after.status_code == 503  # refused at once, never hangs


def test_a_device_failing_batch_after_batch_fails_liveness_but_one_failed_batch_does_not(
    tmp_path: Path,
):
    broken = tmp_path / "broken"  # exists: the child's GPU fails every forward pass
    path = os.pathsep.join(p for p in (str(BROKEN_GPU), os.environ.get("PYTHONPATH")) if p)
    srv = start_server(
        "--device-failures",
        "2",
        "--compute-workers",
        "1",
        env={"PYTHONPATH": path, "CLIPSERVE_TEST_BROKEN_DEVICE": str(broken)},
    )
    try:
        with srv.client() as c:

            def encode(text: str) -> int:
                return c.post("/encode", json=[{"text": text}]).status_code

            assert encode("known good") == 200
            # one failed batch at a time, each followed by good ones: a glitch, not a dead GPU
            glitches = []
            for i in range(3):
                broken.touch()
                glitches.append(encode(f"glitch {i}"))
                broken.unlink()
                glitches += [encode(f"fine {i}"), encode(f"fine again {i}")]
            still = c.get("/healthz").status_code, c.get("/readyz").status_code
            broken.touch()  # now for good
            failing = [encode("first"), encode("second")]
            health, ready = c.get("/healthz"), c.get("/readyz")
            after = c.post("/encode", json=[{"text": "after"}])
            page = MetricsPage(c.get("/metrics").text)
    finally:
        srv.stop()
    assert glitches == [500, 200, 200] * 3 and still == (200, 200)
    assert failing == [500, 500]
    assert health.status_code == 503 and health.json()["status"] == "dead"
    why = health.json()["detail"]
    assert TINY in why and "2 text batches in a row" in why and ILLEGAL_ACCESS in why, why
    assert ready.status_code == 503 and ready.json()["detail"] == why
    assert after.status_code == 503 and "out of service" in after.json()["detail"]
    assert after.headers["retry-after"]
    failed = "clipserve_batcher_failed"
    assert page.value(failed, model=TINY, reason="device_error") == 1
    assert page.value(failed, model=TINY, reason="worker_died") == 0
    assert page.value("clipserve_ready") == 0
    said = [line for line in srv.log().splitlines() if "out of service" in line]
    assert any("ERROR" in line and ILLEGAL_ACCESS in line for line in said), said
