"""The batching policy as tables: a batcher's state in, take n items / wait s / stop out."""

from __future__ import annotations

import pytest
from clipserve.engine.batch_policy import (
    Limits,
    Queue,
    State,
    Stop,
    Take,
    Wait,
    decide,
    intra_op_threads,
)

LIMITS = Limits(max_batch_size=8, max_wait_s=0.020, quiet_s=0.002)
NOW = 100.0


def _queue(ready: int, *, waited: float = 0.0, quiet: float = 1.0, gap: float = 1.0) -> Queue:
    """A queue whose head waited `waited` s, whose last item came `quiet` s ago, `gap` s after
    the one before it."""
    return Queue(ready=ready, oldest=NOW - waited, arrived=NOW - quiet, gap=gap)


def _state(
    text: Queue | None = None,
    image: Queue | None = None,
    *,
    worker: int = 0,
    busy: tuple[bool, ...] = (False,),
    idle_for: tuple[float, ...] | None = None,
    cohort: tuple[int, ...] | None = None,
    stopping: bool = False,
) -> State:
    """Worker `worker` is free; the others are `busy`, or idle for `idle_for` seconds; `cohort`
    is each worker's last text batch (images: none yet)."""
    workers = len(busy)
    return State(
        now=NOW,
        worker=worker,
        queues={"text": text or Queue(0), "image": image or Queue(0)},
        busy=busy,
        freed=tuple(NOW - s for s in (idle_for or (1.0,) * workers)),
        cohort={"text": cohort or (0,) * workers, "image": (0,) * workers},
        stopping=stopping,
    )


TURN_AND_STOP = [
    (
        "an earlier worker is free: its turn",
        _state(_queue(3), worker=1, busy=(False, False)),
        Wait(None),
    ),
    ("nothing queued: wait to be notified", _state(), Wait(None)),
    ("nothing queued while stopping: stop", _state(stopping=True), Stop()),
    (
        "not its turn, stopping, nothing left: stop",
        _state(worker=1, busy=(False, False), stopping=True),
        Stop(),
    ),
    ("stopping flushes what is queued at once", _state(_queue(2), stopping=True), Take("text", 2)),
]

FULL_AND_MAX_WAIT = [
    ("a full batch goes at once", _state(_queue(10, quiet=0)), Take("text", 8)),
    (
        "max wait reached: take what is there",
        _state(_queue(3, waited=0.025, quiet=0)),
        Take("text", 3),
    ),
    (
        "the oldest head's modality goes first",
        _state(_queue(1, waited=0.001), _queue(2, waited=0.030)),
        Take("image", 2),
    ),
]

COHORT = [
    (
        "before a first batch the target is a full one",
        _state(_queue(1, waited=0.005, gap=0)),
        Wait(pytest.approx(0.015)),
    ),
    (
        "the cohort is in and quiet: take it",
        _state(_queue(3, quiet=0.003), cohort=(3,)),
        Take("text", 3),
    ),
    (
        "the cohort is in but may grow: wait out the quiet gap",
        _state(_queue(3, waited=0.001, quiet=0.0005), cohort=(3,)),
        Wait(pytest.approx(0.0015)),
    ),
    (
        "fewer than the cohort: wait up to max wait",
        _state(_queue(2, waited=0.004, quiet=0.003), cohort=(3,)),
        Wait(pytest.approx(0.016)),
    ),
    (
        "a group bigger than the cohort is taken whole",
        _state(_queue(5, quiet=0.003), cohort=(3,)),
        Take("text", 5),
    ),
]

LONE_CLIENT = [
    (
        "a lone client's item goes at once",
        _state(_queue(1, quiet=0, gap=0.5), cohort=(1,)),
        Take("text", 1),
    ),
    (
        "an item trickling in right after another waits the gap",
        _state(_queue(1, quiet=0, gap=0.001), cohort=(1,)),
        Wait(pytest.approx(0.002)),
    ),
    (
        "not lone while another worker computes",
        _state(_queue(1, quiet=0, gap=0.5), busy=(False, True), cohort=(1, 1)),
        Wait(pytest.approx(0.002)),
    ),
    (
        "not lone with an image queued too",
        _state(_queue(1, waited=0.001, quiet=0, gap=0.5), _queue(1), cohort=(1,)),
        Wait(pytest.approx(0.002)),
    ),
]

SHARING = [
    (
        "ready items are shared with an idle worker",
        _state(_queue(8, quiet=0.003), busy=(False, False), idle_for=(1.0, 0.005)),
        Take("text", 4),
    ),
    (
        "a cohort bigger than its share stays whole while its peer's clients come back",
        _state(_queue(8, quiet=0.003), busy=(False, False), idle_for=(1.0, 0.005), cohort=(8, 4)),
        Take("text", 8),
    ),
    (
        "a starving idle worker breaks the cohort up",
        _state(_queue(8, quiet=0.003), busy=(False, False), idle_for=(1.0, 0.025), cohort=(8, 4)),
        Take("text", 4),
    ),
    (
        "no sharing with a busy worker",
        _state(_queue(6, waited=0.025), busy=(False, True), cohort=(8, 4)),
        Take("text", 6),
    ),
    (
        "the share is rounded up",
        _state(_queue(7, waited=0.025), busy=(False, False, False), idle_for=(1.0, 1.0, 1.0)),
        Take("text", 3),
    ),
]


@pytest.mark.parametrize(
    ("state", "expected"),
    [row[1:] for row in TURN_AND_STOP + FULL_AND_MAX_WAIT + COHORT + LONE_CLIENT + SHARING],
    ids=[row[0] for row in TURN_AND_STOP + FULL_AND_MAX_WAIT + COHORT + LONE_CLIENT + SHARING],
)
def test_the_policy_decides(state: State, expected: object):
    assert decide(state, LIMITS) == expected


@pytest.mark.parametrize(
    ("worker", "size", "busy", "expected"),
    [
        (0, 1, (True,), 4),  # the only worker always gets every thread
        (0, 9, (True,), 4),
        (0, 1, (True, False), 4),  # a lone item while the other worker idles
        (0, 1, (True, True), 1),  # ... not while it computes
        (0, 2, (True, False), 1),  # a batch: single-threaded
        (1, 1, (False, True), 1),  # overflow workers: single-threaded
    ],
)
def test_every_thread_only_for_a_lone_item(worker: int, size: int, busy: tuple, expected: int):
    assert intra_op_threads(worker, size, busy, threads=4) == expected
