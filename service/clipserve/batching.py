"""Dynamic batching: per-modality bounded queues served by one compute thread per model.

The event loop only appends to a queue and awaits futures; the compute thread forms batches
(up to `max_batch_size` items, waiting at most `max_wait_s` while idle), runs the forward pass
and resolves each item's future on the loop. Items whose future is already done (the client
went away) are dropped before they cost a forward pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from clipserve.errors import ClipServeError, Overloaded
from clipserve.metrics import Metrics

log = logging.getLogger(__name__)

# A lone client's next item arriving within this long of the last pass is "in a request loop".
_LOOP_GAP_S = 0.05

# One forward pass over a list of items' payloads; returns one embedding row per item.
EncodeFn = Callable[[list[Any]], torch.Tensor]


class ItemFailed(ClipServeError):
    """The forward pass failed for this item alone (the rest of its batch succeeded)."""


@dataclass(eq=False)
class _Pending:
    payload: Any
    future: asyncio.Future[torch.Tensor]
    enqueued: float = field(default_factory=time.monotonic)


class ModelBatcher:
    """The queues and compute thread of one model; `encoders` maps modality -> forward pass."""

    def __init__(self, name: str, encoders: dict[str, EncodeFn], *, max_batch_size: int,
                 max_wait_s: float, max_queue: int, metrics: Metrics) -> None:
        self.name = name
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self._encoders = encoders
        self._queues: dict[str, deque[_Pending]] = {m: deque() for m in encoders}
        # Per modality: size of the last batch and when its forward pass ended (see _max_wait).
        self._last_size: dict[str, int] = dict.fromkeys(encoders, 0)
        self._last_done: dict[str, float] = dict.fromkeys(encoders, 0.0)
        self._cond = threading.Condition()
        self._stopping = False
        self._crashed = False
        self._metrics = metrics
        self._thread = threading.Thread(target=self._run, name=f"compute-{name}", daemon=True)

    # -- event-loop side -------------------------------------------------------------------

    def start(self) -> None:
        """Start the compute thread."""
        self._thread.start()

    @property
    def alive(self) -> bool:
        """False once the compute thread has died (it never should) or has been stopped."""
        return self._thread.is_alive() and not self._crashed

    async def submit(self, modality: str, payloads: Sequence[Any]) -> list[torch.Tensor]:
        """Queue items and wait for their embeddings; Overloaded if the queue is full."""
        loop = asyncio.get_running_loop()
        pending = [_Pending(p, loop.create_future()) for p in payloads]
        with self._cond:
            if self._stopping or not self.alive:
                raise Overloaded(f"model {self.name} is shutting down", retry_after_s=1)
            queue = self._queues[modality]
            if len(queue) + len(pending) > self.max_queue:
                raise Overloaded(f"model {self.name}: {modality} queue is full "
                                 f"({len(queue)} of {self.max_queue} items waiting)")
            queue.extend(pending)
            self._metrics.queue_depth.labels(self.name, modality).set(len(queue))
            self._cond.notify()
        try:
            return list(await asyncio.gather(*(p.future for p in pending)))
        finally:
            # On error or cancellation (client gone), the compute thread skips what is left.
            for p in pending:
                p.future.cancel()

    def stop(self, timeout: float | None = None) -> None:
        """Finish what is queued, then end the compute thread."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._thread.is_alive():
            self._thread.join(timeout)

    # -- compute-thread side ---------------------------------------------------------------

    def _run(self) -> None:
        try:
            while (job := self._next_batch()) is not None:
                self._compute(*job)
        except BaseException:
            log.exception("compute thread of %s died", self.name)
            self._crashed = True
            self._fail_all(ItemFailed(f"the compute thread of model {self.name} died"))

    def _next_batch(self) -> tuple[str, list[_Pending]] | None:
        with self._cond:
            while True:
                for modality, queue in self._queues.items():
                    while queue and queue[0].future.done():  # cancelled: client gone
                        queue.popleft()
                    self._metrics.queue_depth.labels(self.name, modality).set(len(queue))
                heads = [(q[0].enqueued, m) for m, q in self._queues.items() if q]
                if not heads:
                    if self._stopping:
                        return None
                    self._cond.wait()
                    continue
                oldest, modality = min(heads)
                queue = self._queues[modality]
                waited = time.monotonic() - oldest
                max_wait = self._max_wait(modality, oldest)
                if len(queue) >= self.max_batch_size or waited >= max_wait or self._stopping:
                    batch = [queue.popleft() for _ in range(min(len(queue), self.max_batch_size))]
                    batch = [p for p in batch if not p.future.done()]
                    self._metrics.queue_depth.labels(self.name, modality).set(len(queue))
                    if batch:
                        self._last_size[modality] = len(batch)
                        return modality, batch
                    continue
                self._cond.wait(max_wait - waited)

    def _max_wait(self, modality: str, oldest: float) -> float:
        """How long a batch may wait to fill: not at all for a lone client in a request loop.

        A client alone (last batch of 1) that sent its next item right after the last pass
        ended gains nothing from waiting. A group of clients (last batch > 1), or a burst after
        an idle spell, waits up to max_wait_s so the group assembles into one batch instead of
        splitting into cohorts that never merge again.
        """
        lone = self._last_size[modality] == 1
        back_to_back = oldest - self._last_done[modality] < _LOOP_GAP_S
        return 0.0 if lone and back_to_back else self.max_wait_s

    def _compute(self, modality: str, batch: list[_Pending]) -> None:
        m = self._metrics
        start = time.monotonic()
        for p in batch:
            m.queue_wait.labels(self.name, modality).observe(start - p.enqueued)
        try:
            out = self._encoders[modality]([p.payload for p in batch])
        except Exception as exc:
            if len(batch) > 1:
                # Fault isolation: find the culprit(s) one by one; the others still succeed.
                log.warning("%s %s batch of %d failed (%s); retrying items singly",
                            self.name, modality, len(batch), exc)
                for p in batch:
                    self._compute(modality, [p])
                return
            log.exception("%s: %s item failed", self.name, modality)
            m.item_errors.labels("compute").inc()
            self._resolve(batch[0], error=ItemFailed(f"the model failed on this {modality}: {exc}"))
            return
        self._last_done[modality] = time.monotonic()
        m.compute.labels(self.name, modality).observe(self._last_done[modality] - start)
        m.batch_size.labels(self.name, modality).observe(len(batch))
        m.items.labels(self.name, modality).inc(len(batch))
        self._resolve_all(batch, list(out))

    @staticmethod
    def _resolve(p: _Pending, *, result: torch.Tensor | None = None,
                 error: BaseException | None = None) -> None:
        def settle() -> None:
            if p.future.done():
                return
            if error is not None:
                p.future.set_exception(error)
            else:
                p.future.set_result(result)

        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is waiting any more
            p.future.get_loop().call_soon_threadsafe(settle)

    @staticmethod
    def _resolve_all(batch: list[_Pending], rows: list[torch.Tensor]) -> None:
        """Resolve a whole batch with one wake-up of each event loop, not one per item."""
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[_Pending, torch.Tensor]]] = {}
        for p, row in zip(batch, rows, strict=True):
            by_loop.setdefault(p.future.get_loop(), []).append((p, row))

        def settle(pairs: list[tuple[_Pending, torch.Tensor]]) -> None:
            for p, row in pairs:
                if not p.future.done():
                    p.future.set_result(row)

        for loop, pairs in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(settle, pairs)

    def _fail_all(self, error: BaseException) -> None:
        with self._cond:
            for queue in self._queues.values():
                while queue:
                    self._resolve(queue.popleft(), error=error)
