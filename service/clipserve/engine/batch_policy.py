"""When a compute worker takes a batch, and how big: a pure function of the batcher's state.

`decide(state, limits)` answers for one free worker: take n items of a modality, wait s
seconds (or until something changes), or stop. `intra_op_threads` says how many threads the
batch it took gets. No clocks, locks or threads here; batching.py holds the mechanics, and
docs/performance.md ("How the batcher decides") the measurements behind each rule.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

# A cohort is "in" once its size is ready and no item arrived for this long (docs/performance.md).
QUIET_S = 0.002


@dataclass(frozen=True, slots=True)
class Limits:
    """The batcher's settings the rules read."""

    max_batch_size: int
    max_wait_s: float
    quiet_s: float = QUIET_S


class Queue(NamedTuple):  # NamedTuples: built on every wake-up of a worker, so cheap ones
    """One modality's queue, its cancelled head items already dropped."""

    ready: int  # items waiting
    oldest: float = 0.0  # when the head item was queued
    arrived: float = 0.0  # when the last submit came in
    gap: float = 0.0  # time between the last two submits


class State(NamedTuple):
    """What the batcher knows when `worker` is free to take a batch (times on one clock)."""

    now: float
    worker: int
    queues: Mapping[str, Queue]  # by modality
    busy: Sequence[bool]  # per worker
    freed: Sequence[float]  # per worker: when it last finished a batch
    cohort: Mapping[str, Sequence[int]]  # per modality and worker: its last batch's size (0: none)
    stopping: bool = False


@dataclass(frozen=True, slots=True)
class Take:
    """Take `count` items from the head of `modality`'s queue."""

    modality: str
    count: int


@dataclass(frozen=True, slots=True)
class Wait:
    """Wait this long (None: until notified), then decide again."""

    seconds: float | None


@dataclass(frozen=True, slots=True)
class Stop:
    """Stopping and nothing is left: the worker ends."""


Decision = Take | Wait | Stop


def decide(s: State, limits: Limits) -> Decision:
    """The next step of a free worker (rules: turn, full, max wait, cohort + quiet or lone)."""
    nothing_left = not any(q.ready for q in s.queues.values())
    if not all(s.busy[: s.worker]) or nothing_left:
        # an earlier worker is free (its turn), or there is nothing to do
        return Stop() if s.stopping and nothing_left else Wait(None)
    modality = min((q.oldest, m) for m, q in s.queues.items() if q.ready)[1]
    queue = s.queues[modality]
    waited, quiet = s.now - queue.oldest, s.now - queue.arrived
    cohort_in = _cohort_in(s, limits, modality, queue.ready)
    if (
        queue.ready >= limits.max_batch_size
        or waited >= limits.max_wait_s
        or (cohort_in and (quiet >= limits.quiet_s or _lone(s, limits, modality)))
        or s.stopping
    ):
        return Take(modality, _take(s, limits, modality, queue.ready))
    timeout = limits.max_wait_s - waited
    return Wait(min(timeout, limits.quiet_s - quiet) if cohort_in else timeout)


def _cohort_in(s: State, limits: Limits, modality: str, ready: int) -> bool:
    """As many items are ready as this worker's last batch had (its clients came back);
    before its first batch, a full batch."""
    cohort = s.cohort[modality][s.worker] or limits.max_batch_size
    return ready >= min(cohort, limits.max_batch_size)


def _lone(s: State, limits: Limits, modality: str) -> bool:
    """The one queued item is a lone client's: cohort one, nothing else queued or computing,
    and it came after a quiet spell (a trickling group still waits for the quiet gap)."""
    return (
        s.cohort[modality][s.worker] == 1
        and not any(s.busy)
        and sum(q.ready for q in s.queues.values()) == 1
        and s.queues[modality].gap >= limits.quiet_s
    )


def _take(s: State, limits: Limits, modality: str, ready: int) -> int:
    """This worker's cohort, or an even share with the idle workers if that is more; only the
    even share once an idle worker has starved past max_wait (its clients are not coming)."""
    idle = [i for i, busy in enumerate(s.busy) if not busy and i != s.worker]
    even = -(-ready // (len(idle) + 1))
    if any(s.now - s.freed[i] >= limits.max_wait_s for i in idle):
        return min(ready, limits.max_batch_size, even)
    return min(ready, limits.max_batch_size, max(s.cohort[modality][s.worker], even))


def intra_op_threads(worker: int, size: int, busy: Sequence[bool], threads: int) -> int:
    """torch threads for a batch of `size` on `worker`: every thread for a lone item while the
    other workers are idle (or when there is only one worker), else one."""
    if len(busy) == 1:
        return threads
    alone = worker == 0 and size == 1 and not any(busy[1:])
    return threads if alone else 1
