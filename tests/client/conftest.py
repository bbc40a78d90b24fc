"""The client's fixtures: the tiny random-weights model in a real server process."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.server import Server, start_server


@pytest.fixture(scope="package")
def server() -> Iterator[Server]:
    """One shared server: the tiny model, default settings (tests must not change its state)."""
    srv = start_server()
    yield srv
    srv.stop()
