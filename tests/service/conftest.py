"""Service test fixtures: real server processes with the tiny random-weights model."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import pytest
from PIL import Image

from tests.service.server import Server, start_server


@pytest.fixture(scope="package")
def server() -> Iterator[Server]:
    """One shared server: the tiny model, default settings (tests must not change its state)."""
    srv = start_server()
    yield srv
    srv.stop()


def png_bytes(
    size: tuple[int, int] = (64, 48), color: tuple[int, int, int] = (200, 30, 30), mode: str = "RGB"
) -> bytes:
    """A real PNG image."""
    buf = io.BytesIO()
    Image.new(mode, size, color).save(buf, format="PNG")
    return buf.getvalue()


def png_b64(**kw: object) -> str:
    """A real PNG, base64-encoded as `img_blob` expects."""
    return base64.b64encode(png_bytes(**kw)).decode()
