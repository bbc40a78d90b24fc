"""The work queue: one reconcile per ClipService at a time, coalesced triggers, retry rules.

The queue is given a recording function instead of `reconcile`: these tests are about
scheduling; the cluster tests run the real one.
"""

from __future__ import annotations

import asyncio
from typing import Any

from clipserve_operator.errors import ApiError, ReconcileError, TransientError
from clipserve_operator.metrics import Metrics
from clipserve_operator.workqueue import WorkQueue


def _reconciler(behaviour: Any) -> tuple[WorkQueue, list[str]]:
    calls: list[str] = []

    async def work(namespace: str, name: str) -> None:
        calls.append(name)
        await behaviour(len(calls))

    return WorkQueue(work, metrics=Metrics(), retry_delay_s=0.01), calls


def _sample(reconciler: WorkQueue, name: str, **labels: str) -> float:
    value = reconciler.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


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


def test_temporary_error_is_retried_after_its_delay() -> None:
    async def scenario() -> tuple[WorkQueue, list[str]]:
        retried = asyncio.Event()

        async def flaky(n: int) -> None:
            if n == 1:
                raise TransientError("conflict", 0.01)
            retried.set()

        reconciler, calls = _reconciler(flaky)
        reconciler.trigger("ns", "a")
        await asyncio.wait_for(retried.wait(), timeout=10)
        await _settle(reconciler)
        return reconciler, calls

    reconciler, calls = asyncio.run(scenario())
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
