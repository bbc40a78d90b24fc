"""Dynamic batching: per-modality bounded queues served by a model's compute workers.

The event loop only appends to a queue and awaits futures; a compute worker (a thread) forms a
batch (up to `max_batch_size` items, waiting at most `max_wait_s` for the cohort it expects),
runs the forward pass and resolves each item's future on the loop. Items whose future is
already done (the client went away) are dropped before they cost a forward pass.

Several workers run several batches at once (inter-op parallelism). On a CPU that beats one
batch spread over every core: measured on 2 cores, two single-threaded ViT-B-32 text passes at
batch 16 make 170 items/s against 152 for one two-threaded pass, and lose much less when the
event loop takes a core (a parallel region waits for its slowest thread). Worker 0 is the
first choice; worker k takes a batch only while workers 0..k-1 are busy. A batch of one item
while the others are idle gets every intra-op thread (lowest latency for a lone client);
otherwise each worker runs single-threaded, so only one OpenMP team ever exists (libgomp slows
every team down once it manages more threads than there are CPUs: docs/performance.md).
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

# A cohort is "in" once its size is ready and no item arrived for this long: its requests come
# ~1 ms apart while the event loop answers and re-reads them, and a group larger than the last
# cohort must be able to grow it (tried without: cohorts only ever shrank).
_QUIET_S = 0.002

# One forward pass over a list of items' payloads; returns one result (an embedding row) per item.
EncodeFn = Callable[[list[Any]], Sequence[Any]]


class ItemFailed(ClipServeError):
    """The forward pass failed for this item alone (the rest of its batch succeeded)."""


@dataclass(eq=False)
class _Pending:
    payload: Any
    future: asyncio.Future[Any]
    enqueued: float = field(default_factory=time.monotonic)


# An item and what it gets: its result, or the error to raise in its request.
_Outcome = tuple[_Pending, Any]


class ModelBatcher:
    """The queues and compute workers of one model; `encoders` maps modality -> forward pass."""

    def __init__(
        self,
        name: str,
        encoders: dict[str, EncodeFn],
        *,
        max_batch_size: int,
        max_wait_s: float,
        max_queue: int,
        metrics: Metrics,
        workers: int = 1,
        threads: int = 1,
    ) -> None:
        self.name = name
        self.max_batch_size = max_batch_size
        self.max_wait_s = max_wait_s
        self.max_queue = max_queue
        self.threads = threads  # intra-op threads of worker 0 while the others are idle
        self._encoders = encoders
        self._queues: dict[str, deque[_Pending]] = {m: deque() for m in encoders}
        # Per modality and worker: the size of the worker's last batch (see _cohort_in).
        self._cohort: dict[str, list[int]] = {m: [0] * workers for m in encoders}
        self._arrived: dict[str, float] = dict.fromkeys(encoders, 0.0)  # last submit
        self._gap: dict[str, float] = dict.fromkeys(encoders, 0.0)  # ... and the one before
        self._cond = threading.Condition()
        self._stopping = False
        self._crashed = False
        self._metrics = metrics
        for modality in encoders:
            # Exported from the start: an autoscaler reading an idle pod sees 0, not "no metric".
            metrics.queue_depth.labels(name, modality).set(0)
        self._busy = [False] * workers
        self._freed = [0.0] * workers  # when each worker last finished a batch
        self._threads = [
            threading.Thread(target=self._run, args=(i,), name=f"compute-{name}-{i}", daemon=True)
            for i in range(workers)
        ]

    # -- event-loop side -------------------------------------------------------------------

    def start(self) -> None:
        """Start the compute workers."""
        for thread in self._threads:
            thread.start()

    @property
    def workers(self) -> int:
        """Compute workers (forward passes that can run at once)."""
        return len(self._threads)

    @property
    def alive(self) -> bool:
        """False once a compute worker has died (it never should) or they have been stopped."""
        return all(t.is_alive() for t in self._threads) and not self._crashed

    async def submit(self, modality: str, payloads: Sequence[Any]) -> list[Any]:
        """Queue items and wait for their results; Overloaded if the queue is full."""
        loop = asyncio.get_running_loop()
        pending = [_Pending(p, loop.create_future()) for p in payloads]
        with self._cond:
            if self._stopping or not self.alive:
                raise Overloaded(f"model {self.name} is shutting down", retry_after_s=1)
            queue = self._queues[modality]
            if len(queue) + len(pending) > self.max_queue:
                raise Overloaded(
                    f"model {self.name}: {modality} queue is full "
                    f"({len(queue)} of {self.max_queue} items waiting)"
                )
            queue.extend(pending)
            now = time.monotonic()
            self._gap[modality] = now - self._arrived[modality]
            self._arrived[modality] = now
            self._metrics.queue_depth.labels(self.name, modality).set(len(queue))
            self._cond.notify_all()  # the worker whose turn it is may not be the one notify wakes
        try:
            return list(await asyncio.gather(*(p.future for p in pending)))
        finally:
            # On error or cancellation (client gone), the compute workers skip what is left.
            for p in pending:
                p.future.cancel()

    def stop(self, timeout: float | None = None) -> None:
        """Finish what is queued, then end the compute workers."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in self._threads:
            if thread.is_alive():
                thread.join(None if deadline is None else max(0.0, deadline - time.monotonic()))

    # -- compute-worker side ---------------------------------------------------------------

    def _run(self, worker: int) -> None:
        try:
            threads = 0
            while (job := self._next_batch(worker)) is not None:
                want = self._threads_for(worker, len(job[1]))
                if want != threads:
                    torch.set_num_threads(want)  # this thread's OpenMP/MKL setting
                    threads = want
                try:
                    outcomes = self._compute(*job)
                finally:
                    with self._cond:
                        self._busy[worker] = False
                        self._freed[worker] = time.monotonic()
                        self._cond.notify_all()  # a later worker may now wait for its turn
                # Free before the clients hear back: their next items must find this worker
                # free, not wake a later worker that would run them single-threaded.
                self._settle(outcomes)
        except BaseException:
            log.exception("compute worker %d of %s died", worker, self.name)
            self._crashed = True
            self._fail_all(ItemFailed(f"a compute worker of model {self.name} died"))

    def _threads_for(self, worker: int, size: int) -> int:
        """Intra-op threads for a batch: every thread for a lone item, else one (see top)."""
        if self.workers == 1:
            return self.threads
        # Only for a single item: under load, switching one worker to a team of threads that
        # then competes with the others' single threads cost 15% of throughput (measured).
        alone = worker == 0 and size == 1 and not any(self._busy[1:])
        return self.threads if alone else 1

    def _next_batch(self, worker: int) -> tuple[str, list[_Pending]] | None:
        with self._cond:
            while True:
                if not all(self._busy[:worker]):  # an earlier worker is free: its turn
                    if self._stopping and not any(self._queues.values()):
                        return None
                    self._cond.wait()
                    continue
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
                now = time.monotonic()
                waited, quiet = now - oldest, now - self._arrived[modality]
                cohort_in = self._cohort_in(modality, worker, len(queue))
                if (
                    len(queue) >= self.max_batch_size
                    or waited >= self.max_wait_s
                    or (cohort_in and (quiet >= _QUIET_S or self._lone(modality, worker)))
                    or self._stopping
                ):
                    ready = len(queue)
                    batch = [queue.popleft() for _ in range(self._take(modality, worker, ready))]
                    batch = [p for p in batch if not p.future.done()]
                    self._metrics.queue_depth.labels(self.name, modality).set(len(queue))
                    if batch:
                        self._cohort[modality][worker] = len(batch)
                        self._busy[worker] = True
                        self._cond.notify_all()  # the next worker's turn, if work is left
                        return modality, batch
                    continue
                timeout = self.max_wait_s - waited
                self._cond.wait(min(timeout, _QUIET_S - quiet) if cohort_in else timeout)

    def _cohort_in(self, modality: str, worker: int, ready: int) -> bool:
        """Whether the items worth waiting for are here: as many as this worker's last batch.

        Clients that send their next request once answered come back to the worker that
        answered them as a cohort of its last batch's size: a lone client (1) is served at
        once, a group is served whole. Waiting any shorter splits a group into cohorts that
        never merge again (at concurrency 32, batches of 13 instead of 16 and a p95 twice
        the p50); waiting for a full batch every time makes small groups wait max_wait_s.
        Before a worker's first batch the target is a full batch.
        """
        cohort = self._cohort[modality][worker] or self.max_batch_size
        return ready >= min(cohort, self.max_batch_size)

    def _lone(self, modality: str, worker: int) -> bool:
        """Whether the one queued item is a lone client's: its cohort is one, nothing else is
        queued or computing, and it came after a quiet spell, so no group is forming that the
        quiet gap could let grow; waiting would only add latency (2 ms of a concurrency-1
        request's p50, measured). Requests trickling in closer together than the gap (a group
        arriving one by one) still wait for it, and are batched.
        """
        return (
            self._cohort[modality][worker] == 1
            and not any(self._busy)
            and sum(len(q) for q in self._queues.values()) == 1
            and self._gap[modality] >= _QUIET_S
        )

    def _take(self, modality: str, worker: int, ready: int) -> int:
        """How many ready items this worker takes: its cohort, or an even share with the idle
        workers if that is more, or the even share alone once an idle worker is starving.

        Eight items and two idle workers make two single-threaded batches of four, which run
        at once (not one batch of eight on one core while the other core idles). A worker
        idle for longer than max_wait_s has no cohort coming back; without the last rule a
        cohort larger than its fair share (8 clients after a 16-item request) would stay
        whole on one worker for good (measured: 76 instead of 130 text items/s at
        concurrency 8).
        """
        now = time.monotonic()
        idle = [i for i, busy in enumerate(self._busy) if not busy and i != worker]
        even = -(-ready // (len(idle) + 1))
        if any(now - self._freed[i] >= self.max_wait_s for i in idle):
            return min(ready, self.max_batch_size, even)
        return min(ready, self.max_batch_size, max(self._cohort[modality][worker], even))

    def _compute(self, modality: str, batch: list[_Pending]) -> list[_Outcome]:
        """Run one forward pass; each item's embedding, or the error that is its alone."""
        m = self._metrics
        start = time.monotonic()
        for p in batch:
            m.queue_wait.labels(self.name, modality).observe(start - p.enqueued)
        try:
            out = self._encoders[modality]([p.payload for p in batch])
        except Exception as exc:
            if len(batch) > 1:
                # Fault isolation: find the culprit(s) one by one; the others still succeed.
                log.warning(
                    "%s %s batch of %d failed (%s); retrying items singly",
                    self.name,
                    modality,
                    len(batch),
                    exc,
                )
                return [o for p in batch for o in self._compute(modality, [p])]
            log.exception("%s: %s item failed", self.name, modality)
            m.item_errors.labels("compute").inc()
            return [(batch[0], ItemFailed(f"the model failed on this {modality}: {exc}"))]
        m.compute.labels(self.name, modality).observe(time.monotonic() - start)
        m.batch_size.labels(self.name, modality).observe(len(batch))
        m.items.labels(self.name, modality).inc(len(batch))
        return list(zip(batch, out, strict=True))

    @staticmethod
    def _settle(outcomes: list[_Outcome]) -> None:
        """Resolve futures with one wake-up of each event loop, not one per item."""
        by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
        for p, result in outcomes:
            by_loop.setdefault(p.future.get_loop(), []).append((p, result))

        def settle(pairs: list[_Outcome]) -> None:
            for p, result in pairs:
                if p.future.done():
                    continue
                if isinstance(result, BaseException):
                    p.future.set_exception(result)
                else:
                    p.future.set_result(result)

        for loop, pairs in by_loop.items():
            with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
                loop.call_soon_threadsafe(settle, pairs)

    def _fail_all(self, error: BaseException) -> None:
        with self._cond:
            failed = [(p, error) for queue in self._queues.values() for p in queue]
            for queue in self._queues.values():
                queue.clear()
        self._settle(failed)
