"""Item decoding: each request item becomes a model payload (a text, or a uint8 image tensor).

Images are fetched on the event loop (async I/O) and decoded/preprocessed in a thread pool, so
the loop never blocks on pixels. Errors name the item, e.g. `queries[2].img_uri: ...`.
"""

from __future__ import annotations

import asyncio
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

from clipserve.errors import ClipServeError, InvalidInput, PayloadTooLarge
from clipserve.fetch import ImageFetcher
from clipserve.images import (
    ImageLimits,
    decode_base64,
    decode_data_uri,
    is_data_uri,
    prepare_image,
)
from clipserve.schemas import Item

TEXT, IMAGE = "text", "image"
_FIELDS = ("text", "img_uri", "img_blob")


@dataclass(frozen=True)
class Prepared:
    """An item ready for the batcher."""

    modality: str
    payload: Any


class InputDecoder:
    """Turns items into payloads, with the configured limits."""

    def __init__(
        self,
        *,
        fetcher: ImageFetcher,
        limits: ImageLimits,
        max_text_chars: int,
        pool: ThreadPoolExecutor,
    ) -> None:
        self._fetcher = fetcher
        self._limits = limits
        self._max_text_chars = max_text_chars
        self._pool = pool

    async def prepare(self, items: list[Item], image_size: int, where: str) -> list[Prepared]:
        """Decode every item concurrently; the first bad one fails the request."""
        tasks = [
            asyncio.ensure_future(self._prepare_one(item, image_size, f"{where}[{i}]"))
            for i, item in enumerate(items)
        ]
        try:
            return list(await asyncio.gather(*tasks))
        finally:
            for t in tasks:  # after a failure, stop the rest (fetches in flight)
                t.cancel()

    async def _prepare_one(self, item: Item, image_size: int, where: str) -> Prepared:
        given = [f for f in _FIELDS if getattr(item, f) is not None]
        if len(given) != 1:
            problem = "is empty" if not given else f"has {' and '.join(given)}"
            raise InvalidInput(f"{where}: {problem}; give exactly one of text, img_uri, img_blob")
        name = given[0]
        try:
            if name == "text":
                return Prepared(TEXT, self._check_text(item.text))
            value = getattr(item, name)
            if name == "img_uri" and not is_data_uri(value):
                data = await self._fetch(value)
                job = partial(prepare_image, data, image_size, self._limits)
            else:  # base64 decoding of a large blob is CPU work too: keep it off the loop
                job = partial(self._decode_inline, name, value, image_size)
            pixels = await asyncio.get_running_loop().run_in_executor(self._pool, job)
            return Prepared(IMAGE, pixels)
        except ClipServeError as exc:
            raise type(exc)(f"{where}.{name}: {exc.message}") from exc

    def _check_text(self, text: str) -> str:
        if len(text) > self._max_text_chars:
            raise PayloadTooLarge(
                f"text has {len(text)} characters; the limit is {self._max_text_chars}"
            )
        return text

    async def _fetch(self, url: str) -> bytes:
        if not url:
            raise InvalidInput("is empty")
        return await self._fetcher.fetch(url)

    def _decode_inline(self, name: str, value: str, image_size: int) -> Any:
        decode = decode_base64 if name == "img_blob" else decode_data_uri
        return prepare_image(decode(value, self._limits), image_size, self._limits)
