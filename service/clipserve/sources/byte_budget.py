"""A process-wide budget of bytes: image downloads held between their fetch and their decoding.

--fetch-concurrency bounds one request's downloads, but requests are many, and fetched bytes wait
for the decode pool: without a shared bound, 1,024 URLs of 20 MiB (or a few requests of fewer)
hold gigabytes. A download takes its size from the budget once the origin's headers say how big
it is and gives it back once decoded. When the budget is spent, downloads wait their turn, the
oldest request's first (so requests finish one after another rather than all failing together,
and a large image is not starved by small ones); one that waits longer than `wait_s` fails its
request with 503 and Retry-After. Overload waits or is refused, never paid for with memory.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools

from clipserve.errors import Overloaded

# How long a download waits for room: a moment for the decode pool to turn a burst over; past
# it the request is more work than this process can hold, and its client should come back.
WAIT_S = 2.0


class ByteBudget:
    """`capacity` bytes shared by every request's downloads; used on the event loop only."""

    def __init__(self, capacity: int, *, wait_s: float = WAIT_S) -> None:
        if capacity <= 0:
            raise ValueError(f"a byte budget must be positive, not {capacity}")
        self.capacity = capacity
        self.wait_s = wait_s
        self.used = 0
        # (request's start, arrival, size, granted): the oldest request's downloads first
        self._waiters: list[tuple[float, int, int, asyncio.Future[None]]] = []
        self._arrivals = itertools.count()

    async def take(self, size: int, since: float) -> Hold:
        """`size` bytes for a request that started at `since` (loop time), once free and no
        older request waits; Overloaded (503) if that takes longer than `wait_s`."""
        if size > self.capacity:  # the settings keep one image within the budget
            raise ValueError(f"{size} bytes can never fit a budget of {self.capacity}")
        if not self._waiters and self.used + size <= self.capacity:
            self.used += size
            return Hold(self, size)
        granted = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, (since, next(self._arrivals), size, granted))
        self._wake()
        try:
            async with asyncio.timeout(self.wait_s):
                await granted
        except BaseException as exc:
            if granted.done() and not granted.cancelled():
                self._give(size)  # granted just as the wait ended: give it back
            granted.cancel()
            self._wake()  # the next in line may fit now
            if isinstance(exc, TimeoutError):
                raise Overloaded(
                    f"image downloads awaiting decoding hold {self.used} of {self.capacity} "
                    "bytes (--fetch-buffer-bytes); retry shortly"
                ) from None
            raise
        return Hold(self, size)

    def _give(self, size: int) -> None:
        self.used -= size
        self._wake()

    def _wake(self) -> None:
        """Grant waiters in order while the first one fits."""
        while self._waiters:
            _, _, size, granted = self._waiters[0]
            if granted.done():  # gave up waiting
                heapq.heappop(self._waiters)
                continue
            if self.used + size > self.capacity:
                return
            heapq.heappop(self._waiters)
            self.used += size
            granted.set_result(None)


class Hold:
    """Bytes taken from a budget until released (once; releasing again does nothing)."""

    def __init__(self, budget: ByteBudget, size: int) -> None:
        self._budget = budget
        self.size = size

    def shrink(self, size: int) -> None:
        """Keep only `size` bytes (a body smaller than the room taken for it)."""
        if size < self.size:
            self._budget._give(self.size - size)
            self.size = size

    def release(self) -> None:
        """Give every byte back."""
        self.shrink(0)
