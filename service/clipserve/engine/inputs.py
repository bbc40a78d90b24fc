"""Item decoding: each request item becomes a model payload (a text, or a uint8 image tensor).

Images are fetched on the event loop (async I/O) and decoded/preprocessed in a thread pool, so
the loop never blocks on pixels. A request fetches a few URLs at a time (--fetch-concurrency),
each holding its bytes in the fetcher's process-wide budget until they are decoded. An item
already in the embedding cache (its text, or its image bytes once fetched or base64-decoded)
comes back embedded, with no pixels decoded. Errors name the item, e.g.
`queries[2].img_uri: ...`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any

from clipserve.engine.cache import Cached, CacheKey, EmbeddingCache, digest
from clipserve.errors import ClipServeError, InvalidInput, PayloadTooLarge
from clipserve.metrics import Metrics
from clipserve.models import ClipModel
from clipserve.models.images import (
    ImageLimits,
    decode_base64,
    decode_data_uri,
    is_data_uri,
    prepare_image,
)
from clipserve.schemas import Item
from clipserve.sources.fetch import ImageFetcher
from clipserve.tracing import OFF, Tracing

TEXT, IMAGE = "text", "image"
_FIELDS = ("text", "img_uri", "img_blob")


@dataclass(frozen=True)
class Tokens:
    """A text given as the model's token ids, without start and end tokens (OpenAI's token
    arrays); only the OpenAI-compatible route makes these."""

    ids: tuple[int, ...]


@dataclass(frozen=True)
class FetchTurns:
    """One request's turns at fetching: `slots` (--fetch-concurrency) at once, and its place in
    the line for the fetch budget (when it started, on the loop's clock)."""

    slots: asyncio.Semaphore
    since: float


@dataclass(frozen=True)
class Prepared:
    """An item ready for the batcher (`payload`), or already embedded (`cached`)."""

    modality: str
    payload: Any
    key: CacheKey | None = None  # where its embedding goes in the cache (None: cache off)
    cached: Cached | None = None


def _only_text(item: Item) -> bool:
    return item.text is not None and item.img_uri is None and item.img_blob is None


class InputDecoder:
    """Turns items into payloads, with the configured limits, through the embedding cache."""

    def __init__(
        self,
        *,
        fetcher: ImageFetcher,
        limits: ImageLimits,
        max_text_chars: int,
        pool: ThreadPoolExecutor,
        cache: EmbeddingCache,
        metrics: Metrics,
        fetches_per_request: int,
        tracing: Tracing = OFF,
    ) -> None:
        if fetches_per_request < 1:
            raise ValueError(f"fetch_concurrency must be at least 1, not {fetches_per_request}")
        self._fetches_per_request = fetches_per_request
        self._fetcher = fetcher
        self._limits = limits
        self._max_text_chars = max_text_chars
        self._pool = pool
        self._cache = cache
        self._metrics = metrics
        self._tracing = tracing

    def fetch_turns(self) -> FetchTurns:
        """A new request's turns at fetching (one per request: share it between its lists)."""
        loop = asyncio.get_running_loop()
        return FetchTurns(asyncio.Semaphore(self._fetches_per_request), loop.time())

    async def prepare(
        self,
        items: Sequence[Item | Tokens],
        model: ClipModel,
        where: str,
        turns: FetchTurns | None = None,
    ) -> list[Prepared]:
        """Decode every item (images concurrently, URLs a few at a time); the first bad one
        fails the request."""
        turns = turns or self.fetch_turns()
        prepared: list[Prepared | None] = [None] * len(items)
        images: dict[int, asyncio.Future[Prepared]] = {}
        try:
            for i, item in enumerate(items):
                # Texts here, without a task each: /classify's thousands of cached prompts
                # would otherwise spend most of their time in the event loop's scheduling.
                if isinstance(item, Tokens) or _only_text(item):
                    prepared[i] = self._prepare_text(item, model, f"{where}[{i}]")
                else:
                    images[i] = asyncio.ensure_future(
                        self._prepare_image(item, model, f"{where}[{i}]", turns)
                    )
            for i, done in zip(images, await asyncio.gather(*images.values()), strict=True):
                prepared[i] = done
        finally:
            for t in images.values():  # after a failure, stop the rest (fetches in flight)
                t.cancel()
        return prepared  # type: ignore[return-value]  # every slot is filled by now

    def _prepare_text(self, item: Item | Tokens, model: ClipModel, where: str) -> Prepared:
        if isinstance(item, Tokens):
            try:
                row = model.token_row(item.ids)
            except ValueError as exc:
                raise InvalidInput(f"{where}: {exc}") from exc
            return self._text(model, row, b"ids:" + row.numpy().tobytes())
        assert item.text is not None
        try:
            text = self._check_text(item.text)
        except ClipServeError as exc:
            raise type(exc)(f"{where}.text: {exc.message}") from exc
        return self._text(model, text, b"text:" + text.encode("utf-8", "surrogatepass"))

    async def _prepare_image(
        self, item: Item, model: ClipModel, where: str, turns: FetchTurns
    ) -> Prepared:
        """An image item; or an item without exactly one field, refused here."""
        given = [f for f in _FIELDS if getattr(item, f) is not None]
        if len(given) != 1:
            problem = "is empty" if not given else f"has {' and '.join(given)}"
            raise InvalidInput(f"{where}: {problem}; give exactly one of text, img_uri, img_blob")
        name = given[0]
        value = getattr(item, name)
        try:
            if name == "img_uri" and not is_data_uri(value):
                async with turns.slots:
                    return await self._fetched_image(model, value, turns.since)
            # base64 decoding of a large blob is CPU work too: keep it off the loop
            job = partial(self._inline_image, model, name, value, self._tracing.capture())
            return await asyncio.get_running_loop().run_in_executor(self._pool, job)
        except ClipServeError as exc:
            raise type(exc)(f"{where}.{name}: {exc.message}") from exc

    def _text(self, model: ClipModel, payload: Any, content: bytes) -> Prepared:
        key = self._key(model, TEXT, content)
        cached = self._cache.get(key) if key else None
        return Prepared(TEXT, payload, key, cached)

    def _inline_image(self, model: ClipModel, name: str, value: str, trace: object) -> Prepared:
        """In the pool: base64 (a blob or a data: URI) -> bytes, then as `_image`."""
        start = time.perf_counter()
        decode = decode_base64 if name == "img_blob" else decode_data_uri
        return self._image(model, decode(value, self._limits), trace, start)

    def _image(
        self, model: ClipModel, data: bytes, trace: object, start: float | None = None
    ) -> Prepared:
        """In the pool: a cache lookup by the image's bytes, then (on a miss) its pixels; the
        decode span a child of `trace`, the request's context on the loop."""
        start = start or time.perf_counter()
        key = self._key(model, IMAGE, data)
        if key and (cached := self._cache.get(key)) is not None:
            return Prepared(IMAGE, None, key, cached)
        with self._tracing.span("decode", parent=trace):
            pixels = prepare_image(data, model.preprocessing.geometry, self._limits)
        self._metrics.decode.labels(model.spec.raw).observe(time.perf_counter() - start)
        return Prepared(IMAGE, pixels, key)

    def _key(self, model: ClipModel, modality: str, content: bytes) -> CacheKey | None:
        if not self._cache.enabled:
            return None
        return CacheKey(model.spec.raw, modality, digest(content))

    def _check_text(self, text: str) -> str:
        if len(text) > self._max_text_chars:
            raise PayloadTooLarge(
                f"text has {len(text)} characters; the limit is {self._max_text_chars}"
            )
        return text

    async def _fetched_image(self, model: ClipModel, url: str, since: float) -> Prepared:
        """Fetch, then decode in the pool; the bytes stay in the fetch budget until decoded.
        (A request cancelled meanwhile gives them back while a pool thread may still hold
        them: at most one image per preprocess thread.)"""
        if not url:
            raise InvalidInput("is empty")
        start = time.perf_counter()
        async with self._fetcher.fetching(url, since) as data:
            self._metrics.fetch.observe(time.perf_counter() - start)
            job = partial(self._image, model, data, self._tracing.capture())
            return await asyncio.get_running_loop().run_in_executor(self._pool, job)
