"""The app in the test process (litestar's TestClient): for API tests that cross no process
boundary. Signals, drain and batching over real connections stay with real server processes."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from clipserve.http.app import create_app
from clipserve.settings import Settings
from litestar.testing import TestClient

from tests.support.polling import eventually
from tests.support.server import MODEL_CONFIGS, TINY


@contextmanager
def in_process(*models: str, **settings: Any) -> Iterator[TestClient]:
    """A client of a fresh app serving `models` (default the tiny one) with these Settings
    fields (dtype fp32 unless given, as `start_server`), once /readyz says 200; the app (and
    its compute threads) stop afterwards."""
    settings = {"dtype": "fp32", **settings}
    app = create_app(
        Settings(model=models or (TINY,), model_config_dir=str(MODEL_CONFIGS), **settings)
    )
    # like a real server: a bug is a 500 the test sees, not an exception raised in the test
    with TestClient(app, raise_server_exceptions=False, timeout=60) as client:
        eventually(lambda: client.get("/readyz").status_code == 200, "models loaded", every_s=0.05)
        yield client
