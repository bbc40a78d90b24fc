"""The work of a run: shards of items through the server's own engine, published one by one.

Each item is one `Engine.encode` call, exactly as `/encode` runs it (same decoding, limits,
fetcher, batcher, normalization), so its vector is the one the server returns; the batcher
joins many concurrent single-item calls into full forward passes, as it does for many clients.
One item's failure is its row's `error` and touches no other item.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import time
from collections.abc import Callable, Generator
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from clipserve.corpus.items import Corpus, Item
from clipserve.corpus.output import Output, ShardResult
from clipserve.corpus.progress import Progress
from clipserve.engine.engine import Engine
from clipserve.errors import ClipServeError
from clipserve.schemas import Item as Request

Row = tuple[np.ndarray | None, str | None]  # an item's vector, or why it has none
# Shards in flight at once: the next shard's items fill the batcher while the last items of
# the one before finish, so the device does not idle at every shard boundary.
SHARDS_AT_ONCE = 2


class RunFailed(Exception):
    """The run cannot go on (the output cannot be written, the device failed); the message
    names the shard and the cause."""


class Embedder:
    """Runs shards through one loaded engine; at most `in_flight` items at once."""

    def __init__(
        self,
        engine: Engine,
        output: Output,
        progress: Progress,
        *,
        normalize: bool,
        in_flight: int,
        io_threads: int = 16,
    ) -> None:
        self._engine = engine
        self._output = output
        self._progress = progress
        self._normalize = normalize
        self._slots = asyncio.Semaphore(in_flight)
        # Reading files (many at once: on S3 each read is a round trip) and base64 for the engine
        self._io = ThreadPoolExecutor(io_threads, thread_name_prefix="read")

    async def run(self, corpus: Corpus, shards: list[int]) -> None:
        """Embed and publish every shard in `shards`; the first failure stops the run."""
        todo = iter(shards)
        running: set[asyncio.Task[None]] = set()
        try:
            for k in todo:
                running.add(asyncio.create_task(self._shard(corpus, k)))
                if len(running) >= SHARDS_AT_ONCE:
                    done, running = await asyncio.wait(running, return_when="FIRST_COMPLETED")
                    for task in done:
                        task.result()  # raises the shard's failure
            await asyncio.gather(*running)
        finally:
            for task in running:
                task.cancel()
            self._io.shutdown(wait=False, cancel_futures=True)

    async def _shard(self, corpus: Corpus, k: int) -> None:
        start = time.monotonic()
        ids, rows = await self._stream(corpus.items(k))
        if (why := self._engine.failure) is not None:
            # every item after the failure got an error row: publishing them would pass a
            # broken device off as bad input
            raise RunFailed(f"shard {k}: {why}")
        result = ShardResult(ids, [v for v, _ in rows], [e for _, e in rows])
        seconds = time.monotonic() - start
        try:
            manifest = await asyncio.to_thread(self._output.publish, k, result, seconds)
        except OSError as exc:
            raise RunFailed(
                f"shard {k}: writing {self._output.store.url} failed: {exc.strerror or exc}; "
                "nothing of this shard is published"
            ) from exc
        self._progress.event(
            "shard",
            shard=k,
            items=manifest["items"],
            failed=manifest["failed"],
            seconds=manifest["seconds"],
            items_per_s=round(self._progress.rate, 1),
        )

    async def _stream(self, source: Generator[Item, None, None]) -> tuple[list[str], list[Row]]:
        """Every item of `source` embedded, in order. An item is read only once a slot is free,
        so a shard's bytes (a WebDataset .tar of gigabytes) are never all in memory: only
        the items in flight, and each is dropped once embedded."""
        loop = asyncio.get_running_loop()
        ids: list[str] = []
        tasks: list[asyncio.Task[Row]] = []
        try:
            while True:
                await self._slots.acquire()
                try:
                    item = await loop.run_in_executor(self._io, next, source, None)
                except BaseException:
                    self._slots.release()
                    raise
                if item is None:
                    self._slots.release()
                    break
                ids.append(item.id)
                tasks.append(asyncio.create_task(self._item(item)))
            return ids, list(await asyncio.gather(*tasks))
        finally:
            for task in tasks:  # done ones stay done; on a failure the others stop
                task.cancel()
            # closes the shard's file now; if a reader thread is still in it (this shard was
            # cancelled meanwhile), when the generator is collected
            with contextlib.suppress(ValueError):
                source.close()

    async def _item(self, item: Item) -> Row:
        """One item's vector, or why it has none; gives back the slot taken to read it."""
        try:
            vector, error = await self._embed(item)
        finally:
            self._slots.release()
        self._progress.item(error is not None)
        return vector, error

    async def _embed(self, item: Item) -> Row:
        if item.error is not None:
            return None, item.error
        try:
            request = await self._request(item)
            out = await self._engine.encode(
                [request], model=None, normalize=self._normalize, where="item"
            )
        except ClipServeError as exc:
            return None, _reason(exc.message)
        except OSError as exc:  # a file named by a list, or an S3 object, that cannot be read
            return None, f"image: cannot read: {exc.strerror or exc}"
        return out.vectors[0].numpy(), None

    async def _request(self, item: Item) -> Request:
        if item.text is not None:
            return Request(text=item.text)
        if item.url is not None:
            return Request(img_uri=item.url)
        read: Callable[[], bytes] = item.load or (lambda: item.data or b"")
        blob = await asyncio.get_running_loop().run_in_executor(
            self._io, lambda: base64.b64encode(read()).decode("ascii")
        )
        return Request(img_blob=blob)


def _reason(message: str) -> str:
    """The engine's `item[0].img_blob: why` as this item's own `image: why`."""
    message = message.removeprefix("item[0]").removeprefix(".").removeprefix(": ")
    for field, shown in (("img_blob", "image"), ("img_uri", "image"), ("text", "text")):
        if message.startswith(field + ":"):
            return shown + message[len(field) :]
    return message
