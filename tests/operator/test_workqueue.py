"""The work queue: one reconcile per ClipService at a time, coalesced triggers, retry rules.

The queue is given a recording function instead of `reconcile`: these tests are about
scheduling; the cluster tests run the real one.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import pytest
from clipserve_operator.errors import ApiError, Forbidden, ReconcileError, TransientError
from clipserve_operator.metrics import Metrics
from clipserve_operator.workqueue import MAX_SLOW_RETRY_S, WorkQueue, slow_retry_s


def _reconciler(behaviour: Any) -> tuple[WorkQueue, list[str]]:
    calls: list[str] = []

    async def work(namespace: str, name: str) -> None:
        calls.append(name)
        await behaviour(len(calls))

    return WorkQueue(work, metrics=Metrics(), retry_delay_s=0.01), calls


def _sample(reconciler: WorkQueue, name: str, **labels: str) -> float:
    """The sum of a metric's samples that carry these labels (whatever their others)."""
    return sum(
        sample.value
        for metric in reconciler.metrics.registry.collect()
        for sample in metric.samples
        if sample.name == name and labels.items() <= sample.labels.items()
    )


async def _settle(reconciler: WorkQueue) -> None:
    while reconciler._tasks:
        await asyncio.gather(*reconciler._tasks.values())


def test_triggers_during_a_run_coalesce_into_one_more_run() -> None:
    release = asyncio.Event()

    async def slow(n: int) -> None:
        if n == 1:
            await release.wait()

    async def scenario() -> list[str]:
        reconciler, calls = _reconciler(slow)
        reconciler.trigger("ns", "a")
        await asyncio.sleep(0)
        for _ in range(5):
            reconciler.trigger("ns", "a")  # while the first run is in progress
        release.set()
        await _settle(reconciler)
        assert _sample(reconciler, "clipserve_operator_reconciles_total", result="ok") == 2
        return calls

    assert asyncio.run(scenario()) == ["a", "a"]


def _fails_once(error: Exception) -> tuple[WorkQueue, list[str]]:
    """Run a key whose first run raises `error` and whose second succeeds."""

    async def scenario() -> tuple[WorkQueue, list[str]]:
        retried = asyncio.Event()

        async def flaky(n: int) -> None:
            if n == 1:
                raise error
            retried.set()

        reconciler, calls = _reconciler(flaky)
        reconciler.trigger("ns", "a")
        await asyncio.wait_for(retried.wait(), timeout=10)
        await _settle(reconciler)
        return reconciler, calls

    return asyncio.run(scenario())


def test_temporary_error_is_retried_after_its_delay() -> None:
    reconciler, calls = _fails_once(TransientError("conflict", 0.01))
    assert calls == ["a", "a"]
    assert _sample(reconciler, "clipserve_operator_reconcile_errors_total", kind="temporary") == 1
    assert _sample(reconciler, "clipserve_operator_reconciles_total", result="ok") == 1


def test_permanent_error_waits_for_the_next_change() -> None:
    async def broken(n: int) -> None:
        raise ReconcileError("helm template failed")

    async def scenario() -> tuple[WorkQueue, list[str]]:
        reconciler, calls = _reconciler(broken)
        reconciler.trigger("ns", "a")
        await _settle(reconciler)
        await asyncio.sleep(0.05)  # a retry would have run by now (retry_delay_s is 0.01)
        return reconciler, calls

    reconciler, calls = asyncio.run(scenario())
    assert calls == ["a"] and not reconciler._retries
    assert _sample(reconciler, "clipserve_operator_reconcile_errors_total", kind="permanent") == 1


def test_dying_namespace_is_not_an_error() -> None:
    async def terminating(n: int) -> None:
        raise ApiError(403, "services is forbidden: namespace x because it is being terminated")

    async def scenario() -> WorkQueue:
        reconciler, _ = _reconciler(terminating)
        reconciler.trigger("ns", "a")
        await _settle(reconciler)
        return reconciler

    reconciler = asyncio.run(scenario())
    assert not reconciler._retries
    assert _sample(reconciler, "clipserve_operator_reconcile_errors_total", kind="permanent") == 0


def test_a_cause_outside_the_clipservice_is_retried_slowly() -> None:
    async def scenario() -> tuple[WorkQueue, list[str], list[float]]:
        done = asyncio.Event()
        times: list[float] = []

        async def denied(n: int) -> None:
            times.append(asyncio.get_running_loop().time())
            if n <= 2:
                raise Forbidden("forbidden: the operator may not patch services in namespace ns")
            done.set()

        reconciler, calls = _reconciler(denied)
        reconciler.trigger("ns", "a")
        await asyncio.wait_for(done.wait(), timeout=10)
        await _settle(reconciler)
        return reconciler, calls, [b - a for a, b in itertools.pairwise(times)]

    reconciler, calls, gaps = asyncio.run(scenario())
    assert calls == ["a", "a", "a"] and min(gaps) >= 0.06  # 6 x retry_delay_s
    errors = "clipserve_operator_reconcile_errors_total"
    assert _sample(reconciler, errors, kind="permanent", reason="Forbidden") == 2
    assert not reconciler._failing_since  # a success ends the outage


@pytest.mark.parametrize(
    ("failing_for_s", "retry_s"),
    [(0, 30), (30, 30), (100, 50), (400, 200), (3600, MAX_SLOW_RETRY_S)],
)
def test_a_long_outage_is_retried_less_often_but_within_half_its_length(
    failing_for_s: float, retry_s: float
) -> None:
    assert slow_retry_s(5.0, failing_for_s) == retry_s


def test_a_bug_is_counted_as_unexpected_and_retried() -> None:
    reconciler, calls = _fails_once(KeyError("spec"))
    assert calls == ["a", "a"]
    errors = "clipserve_operator_reconcile_errors_total"
    assert _sample(reconciler, errors, kind="unexpected", reason="InternalError") == 1
