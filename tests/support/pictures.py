"""Real images for requests: PNG bytes and the base64 `img_blob` form."""

from __future__ import annotations

import base64
import io

from PIL import Image


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
