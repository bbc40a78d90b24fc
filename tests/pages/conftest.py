"""Page test fixtures: real servers (tiny model), nginx serving one at /clip/, Debian's chromium."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.browser import chromium
from tests.support.pictures import png_bytes
from tests.support.proxy import Proxy, start_proxy
from tests.support.rendering import install_tool
from tests.support.server import Server, start_server

API_KEY = "playground-test-key"


@pytest.fixture(scope="session")
def chromedriver() -> str:
    """Debian's chromium, chromium-driver and nginx, installed once (scripts/install-browser.sh)."""
    return install_tool("install-browser.sh")


@pytest.fixture(scope="package")
def server() -> Iterator[Server]:
    """The tiny model with default settings: playground on, no API key."""
    srv = start_server()
    yield srv
    srv.stop()


@pytest.fixture(scope="package")
def keyed_server() -> Iterator[Server]:
    """The tiny model behind an API key."""
    srv = start_server("--api-key", API_KEY)
    yield srv
    srv.stop()


@pytest.fixture(scope="package")
def proxy(
    server: Server, chromedriver: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Proxy]:
    """nginx serving `server` at /clip/ (the prefix stripped, as an ingress rewrite does)."""
    running = start_proxy(server.url, tmp_path_factory.mktemp("nginx"))
    yield running
    running.stop()


@pytest.fixture
def browser(chromedriver: str, tmp_path: Path):
    """A fresh headless chromium with its own profile."""
    with chromium(chromedriver, tmp_path / "profile") as driver:
        yield driver


@pytest.fixture(scope="package")
def images(tmp_path_factory: pytest.TempPathFactory) -> list[Path]:
    """Three real PNG files (red, green, blue) to upload."""
    folder = tmp_path_factory.mktemp("images")
    paths = []
    for name, color in (("red", (200, 30, 30)), ("green", (30, 180, 60)), ("blue", (40, 60, 210))):
        path = folder / f"{name}.png"
        path.write_bytes(png_bytes(size=(96, 64), color=color))
        paths.append(path)
    return paths
