"""Dynamic batching mechanics: per-modality bounded queues served by a model's compute workers.

The event loop only appends to a queue and awaits futures; a compute worker (a thread) asks
batch_policy.decide when to take a batch and how big, runs the forward pass and resolves each
item's future on the loop. Items whose future is already done (the client went away) are
dropped before they cost a forward pass. Several workers run several batches at once; why that,
and every rule of the policy, is measured in docs/performance.md ("How the batcher decides").

A broken device (faults.py) fails every batch: after `fail_after` batches of a worker in a row
failed with a device error, and then an item the model served before, the batcher takes its
model out of service (`failure`), so that /readyz and /healthz fail and the pod is restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from clipserve.engine.batch_policy import (
    QUIET_S,
    Limits,
    Queue,
    State,
    Stop,
    Wait,
    decide,
    intra_op_threads,
)
from clipserve.engine.faults import DeviceWatch
from clipserve.errors import ClipServeError, Overloaded
from clipserve.metrics import FAILURE_REASONS, Metrics
from clipserve.tracing import OFF, Tracing

log = logging.getLogger(__name__)

# One forward pass over a list of items' payloads; returns one result (an embedding row) per item.
EncodeFn = Callable[[list[Any]], Sequence[Any]]


class ItemFailed(ClipServeError):
    """The forward pass failed for this item alone (the rest of its batch succeeded)."""


@dataclass(eq=False)
class _Pending:
    payload: Any
    future: asyncio.Future[Any]
    enqueued: float = field(default_factory=time.monotonic)
    trace: object | None = None  # its request's context, for the batch span (None: off)


# An item and what it gets: its result, or the error to raise in its request.
_Outcome = tuple[_Pending, Any]


class ModelBatcher:
    """The queues and compute workers of one model; `encoders` maps modality -> forward pass."""

    def __init__(
        self,
        name: str,
        encoders: Mapping[str, EncodeFn],
        *,
        max_batch_size: int,
        max_wait_s: float,
        max_queue: int,
        metrics: Metrics,
        workers: int = 1,
        threads: int = 1,
        quiet_s: float = QUIET_S,
        fail_after: int = 0,
        tracing: Tracing = OFF,
    ) -> None:
        self.name = name
        self.limits = Limits(max_batch_size, max_wait_s, quiet_s)
        self.max_queue = max_queue
        self.threads = threads  # intra-op threads of worker 0 while the others are idle
        self._encoders = encoders
        self._queues: dict[str, deque[_Pending]] = {m: deque() for m in encoders}
        # Per modality and worker: the size of the worker's last batch (its cohort).
        self._cohort: dict[str, list[int]] = {m: [0] * workers for m in encoders}
        self._arrived: dict[str, float] = dict.fromkeys(encoders, 0.0)  # last submit
        self._gap: dict[str, float] = dict.fromkeys(encoders, 0.0)  # ... and the one before
        self._cond = threading.Condition()
        self._stopping = False
        self._failure: str | None = None  # why the model is out of service
        self._watch = DeviceWatch(name, workers, fail_after, lambda m, p: encoders[m]([p]))
        self._metrics = metrics
        self._tracing = tracing
        for modality in encoders:
            # Exported from the start: an autoscaler reading an idle pod sees 0, not "no metric".
            metrics.queue_depth.labels(name, modality).set(0)
        for reason in FAILURE_REASONS:
            metrics.batcher_failed.labels(name, reason).set(0)
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
        """False once a compute worker has died (it never should), the model was taken out of
        service, or the workers have been stopped."""
        return all(t.is_alive() for t in self._threads) and self._failure is None

    @property
    def failure(self) -> str | None:
        """Why this model can no longer serve (None while it can, and once stopped)."""
        if self._failure is None and not self._stopping and not self.alive:
            return "a compute thread died"
        return self._failure

    async def submit(self, modality: str, payloads: Sequence[Any]) -> list[Any]:
        """Queue items and wait for their results; Overloaded if the queue is full."""
        loop = asyncio.get_running_loop()
        trace = self._tracing.capture()
        pending = [_Pending(p, loop.create_future(), trace=trace) for p in payloads]
        with self._cond:
            if self._failure is not None:
                raise Overloaded(f"model {self.name} is out of service: {self._failure}")
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
                want = intra_op_threads(worker, len(job[1]), self._busy, self.threads)
                if want != threads:
                    torch.set_num_threads(want)  # this thread's OpenMP/MKL setting
                    threads = want
                try:
                    with self._tracing.batch("batch", job[1], self._span_attributes(*job)):
                        outcomes = self._compute(*job)
                finally:
                    with self._cond:
                        self._busy[worker] = False
                        self._freed[worker] = time.monotonic()
                        self._cond.notify_all()  # a later worker may now wait for its turn
                # The verdict before the clients hear back: whoever asks /healthz after this
                # batch's answer hears it. Free before that: their next items must find this
                # worker free, not wake a later worker that would run them single-threaded.
                if why := self._watch.judge(worker, job[0], [(p.payload, r) for p, r in outcomes]):
                    self._fail("device_error", why)
                self._settle(outcomes)
        except BaseException:
            log.exception("compute worker %d of %s died", worker, self.name)
            self._fail("worker_died", "a compute thread died")

    def _next_batch(self, worker: int) -> tuple[str, list[_Pending]] | None:
        """Wait until the policy gives this worker a batch (None: stopped)."""
        with self._cond:
            while True:
                if self._failure is not None:
                    return None
                decision = decide(self._state(worker), self.limits)
                if isinstance(decision, Stop):
                    return None
                if isinstance(decision, Wait):
                    self._cond.wait(decision.seconds)
                    continue
                modality, queue = decision.modality, self._queues[decision.modality]
                batch = [queue.popleft() for _ in range(decision.count)]
                batch = [p for p in batch if not p.future.done()]
                self._metrics.queue_depth.labels(self.name, modality).set(len(queue))
                if batch:
                    self._cohort[modality][worker] = len(batch)
                    self._busy[worker] = True
                    self._cond.notify_all()  # the next worker's turn, if work is left
                    return modality, batch

    def _span_attributes(self, modality: str, batch: list[_Pending]) -> dict[str, object]:
        return {
            "clipserve.model": self.name,
            "clipserve.modality": modality,
            "clipserve.batch_size": len(batch),
        }

    def _state(self, worker: int) -> State:
        """The policy's view, after dropping cancelled items at the queues' heads (lock held)."""
        queues = {}
        for modality, queue in self._queues.items():
            dropped = False
            while queue and queue[0].future.done():  # cancelled: client gone
                queue.popleft()
                dropped = True
            if dropped:
                self._metrics.queue_depth.labels(self.name, modality).set(len(queue))
            # positional: this runs on every wake-up of every worker
            queues[modality] = Queue(
                len(queue),
                queue[0].enqueued if queue else 0.0,
                self._arrived[modality],
                self._gap[modality],
            )
        return State(
            time.monotonic(),
            worker,
            queues,
            self._busy,  # the live lists: decide() reads them under this lock only
            self._freed,
            self._cohort,
            self._stopping,
        )

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
            failed = ItemFailed(f"the model failed on this {modality}: {exc}")
            failed.__cause__ = exc  # what the DeviceWatch classifies
            return [(batch[0], failed)]
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

    def _fail(self, reason: str, why: str) -> None:
        """Take the model out of service: refuse new items, fail queued ones with 503."""
        with self._cond:
            if self._failure is not None:
                return
            self._failure = why
            self._cond.notify_all()  # the other workers stop too
        self._metrics.batcher_failed.labels(self.name, reason).set(1)
        log.error("model %s is out of service until the process restarts: %s", self.name, why)
        self._fail_all(Overloaded(f"model {self.name} is out of service: {why}"))

    def _fail_all(self, error: BaseException) -> None:
        with self._cond:
            failed = [(p, error) for queue in self._queues.values() for p in queue]
            for queue in self._queues.values():
                queue.clear()
        self._settle(failed)
