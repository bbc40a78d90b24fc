"""A keyed work queue: one run per (namespace, name) at a time, coalesced triggers, retries."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from .errors import ApiError, InternalError, ReconcileError, TransientError, api_failure
from .metrics import Metrics

Key = tuple[str, str]
# The work for one key; it raises the operator's errors (errors.py) to ask for a retry.
Work = Callable[[str, str], Awaitable[None]]
logger = logging.getLogger("clipserve_operator")
# The longest wait before retrying a failure whose cause lies outside the ClipService.
MAX_SLOW_RETRY_S = 300.0


def slow_retry_s(retry_delay_s: float, failing_for_s: float) -> float:
    """When to retry a cause outside the ClipService (helm, RBAC, a missing kind): after 6 retry
    delays, or half as long as it has been failing, up to MAX_SLOW_RETRY_S. It grows with the
    outage, not with the events that re-ran the reconcile meanwhile, and a fix is seen within
    half the outage so far."""
    return min(max(retry_delay_s * 6, failing_for_s / 2), MAX_SLOW_RETRY_S)


class WorkQueue:
    """Runs `work` at most once per key at a time; triggers during a run coalesce into one more."""

    def __init__(self, work: Work, *, metrics: Metrics, retry_delay_s: float) -> None:
        self.work, self.metrics, self.retry_delay_s = work, metrics, retry_delay_s
        self._tasks: dict[Key, asyncio.Task[None]] = {}
        self._dirty: set[Key] = set()
        self._retries: dict[Key, asyncio.TimerHandle] = {}
        self._failing_since: dict[Key, float] = {}  # first of the failed runs in a row

    @property
    def running(self) -> int:
        """Keys being worked on right now."""
        return len(self._tasks)

    def trigger(self, namespace: str, name: str) -> None:
        """Run soon (now, or right after the running work of the same key)."""
        key = (namespace, name)
        if key in self._tasks:
            self._dirty.add(key)
            return
        self._tasks[key] = asyncio.get_running_loop().create_task(self._run(key))

    def later(self, namespace: str, name: str, delay: float) -> None:
        """Run again after `delay` seconds (replacing a retry already scheduled)."""
        self._schedule((namespace, name), delay)

    async def _run(self, key: Key) -> None:
        """Work until no trigger arrived meanwhile; schedule a retry after a failure."""
        try:
            while True:
                self._dirty.discard(key)
                retry = await self._once(key)
                if retry is not None:
                    self._schedule(key, retry)
                if key not in self._dirty:
                    break
        finally:
            self._tasks.pop(key, None)

    def _schedule(self, key: Key, delay: float) -> None:
        """Retry later (one pending retry per key)."""
        old = self._retries.pop(key, None)
        if old is not None:
            old.cancel()
        self._retries[key] = asyncio.get_running_loop().call_later(delay, self.trigger, *key)

    async def _once(self, key: Key) -> float | None:
        """One run with metrics; returns a retry delay or None."""
        metrics, started = self.metrics, time.monotonic()
        result, retry = "error", None
        since = self._failing_since.pop(key, started)  # put back below unless this run succeeds
        slow = slow_retry_s(self.retry_delay_s, started - since)
        try:
            await self.work(*key)
            result = "ok"
        except TransientError as exc:
            metrics.errors.labels(exc.kind, exc.reason).inc()
            logger.warning("%s/%s: %s (retrying in %ss)", *key, exc, exc.delay)
            retry = exc.delay
        except ReconcileError as exc:
            # Shown on the ClipService; waits for its next change, or, when the cause lies
            # outside it (helm, RBAC, the cluster), is retried every few delays.
            metrics.errors.labels(exc.kind, exc.reason).inc()
            trace = exc.__cause__ if isinstance(exc, InternalError) else None
            logger.error("%s/%s: %s: %s", *key, exc.reason, exc, exc_info=trace)
            retry = slow if exc.external else None
        except ApiError as exc:  # reading the ClipService, or writing its status, failed
            if exc.namespace_terminating:  # the namespace and the ClipService are going away
                logger.debug("%s/%s: %s", *key, exc)
                return None
            error = api_failure(exc, self.retry_delay_s)
            metrics.errors.labels(error.kind, error.reason).inc()
            logger.warning("%s/%s: %s", *key, exc)
            retry = self.retry_delay_s if exc.transient else slow
        except Exception:
            metrics.errors.labels(InternalError.kind, InternalError.reason).inc()
            logger.exception("%s/%s: reconcile failed", *key)
            retry = slow
        finally:
            metrics.duration.observe(time.monotonic() - started)
            metrics.reconciles.labels(result).inc()
            if result != "ok":
                self._failing_since[key] = since
        return retry

    async def close(self) -> None:
        """Stop retries and running work."""
        for handle in self._retries.values():
            handle.cancel()
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
