"""Service test fixtures: the tiny random-weights model in a real server process, or in-process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from litestar.testing import TestClient

from tests.support.inprocess import in_process
from tests.support.server import Server, start_server


@pytest.fixture(scope="package")
def server() -> Iterator[Server]:
    """One shared server: the tiny model, default settings (tests must not change its state)."""
    srv = start_server()
    yield srv
    srv.stop()


@pytest.fixture(scope="package")
def api() -> Iterator[TestClient]:
    """One shared app in this process, as `server` but without HTTP between (same rules)."""
    with in_process() as client:
        yield client
