"""A dead compute thread turns /healthz and /readyz red (the real app, in-process)."""

from __future__ import annotations

import time

from clipserve.app import create_app
from clipserve.settings import Settings
from litestar.testing import TestClient

from tests.service.server import MODEL_CONFIGS, TINY


def test_a_dead_compute_thread_fails_liveness_and_readiness():
    app = create_app(Settings(model=(TINY,), model_config_dir=str(MODEL_CONFIGS)))
    with TestClient(app) as client:
        deadline = time.monotonic() + 60
        while client.get("/readyz").status_code != 200 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("/healthz").status_code == 200
        embedder = app.dependencies["embedder"].dependency()  # what the handlers are given
        batcher = embedder.batchers[TINY]

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
