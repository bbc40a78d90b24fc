"""What a request is made of: texts, and images from paths, bytes, PIL images or URLs."""

from __future__ import annotations

import base64
import io
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol, TypeAlias

_URI_SCHEMES = ("http://", "https://", "data:")


class SavableImage(Protocol):
    """A PIL image, or anything that saves itself like one."""

    def save(self, fp: Any, format: str | None = None) -> None: ...


# An image: a URL or data: URI, a local path, the file's bytes, or a PIL image.
ImageSource: TypeAlias = str | os.PathLike[str] | bytes | SavableImage
# One request item as the server takes it: {"text": ...}, {"img_uri": ...} or {"img_blob": ...}.
Item: TypeAlias = dict[str, str]


def text(value: str) -> Item:
    """A text item (for rank; plain strings there are texts too)."""
    return {"text": value}


def image(source: ImageSource) -> Item:
    """An image item: URLs and data: URIs are sent for the server to fetch, anything else
    (a path, bytes, a PIL image) is sent inline as base64."""
    if isinstance(source, str):
        if source.startswith(_URI_SCHEMES):
            return {"img_uri": source}
        source = Path(source)
    if isinstance(source, os.PathLike):
        data = Path(source).read_bytes()
    elif isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
    elif hasattr(source, "save"):
        data = _png(source)
    else:
        raise TypeError(f"not an image source: {type(source).__name__}")
    return {"img_blob": base64.b64encode(data).decode("ascii")}


def _png(picture: Any) -> bytes:
    buf = io.BytesIO()
    if getattr(picture, "mode", "RGB") not in ("1", "L", "LA", "I", "P", "RGB", "RGBA"):
        picture = picture.convert("RGB")  # PNG has no CMYK or YCbCr
    picture.save(buf, format="PNG")
    return buf.getvalue()


def as_item(value: str | Item | ImageSource) -> Item:
    """A rank query or candidate: a string is a text, an item stays, anything else an image."""
    if isinstance(value, str):
        return text(value)
    if isinstance(value, dict):
        return value
    return image(value)


def texts_of(texts: str | Sequence[str] | None) -> list[str]:
    """One text or several, as a list."""
    if texts is None:
        return []
    return [texts] if isinstance(texts, str) else list(texts)


def images_of(images: ImageSource | Sequence[ImageSource] | None) -> list[ImageSource]:
    """One image source or several, as a list."""
    if images is None:
        return []
    if isinstance(images, str | bytes | os.PathLike) or hasattr(images, "save"):
        return [images]
    return list(images)
