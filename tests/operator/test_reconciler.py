"""The Reconciler: one reconcile per ClipService at a time, coalesced triggers, kopf retry rules.

`reconcile` itself is replaced by a recording stub here: these tests are about scheduling; the
cluster tests run the real one.
"""

from __future__ import annotations

import asyncio
from typing import Any

import kopf
import pytest
from clipserve_operator import reconcile as module
from clipserve_operator.kube import ApiError
from clipserve_operator.metrics import Metrics
from clipserve_operator.reconcile import Context, Reconciler
from clipserve_operator.settings import Settings


def _reconciler(monkeypatch: pytest.MonkeyPatch, behaviour: Any) -> tuple[Reconciler, list[str]]:
    calls: list[str] = []

    async def fake(ctx: Context, namespace: str, name: str) -> None:
        calls.append(name)
        await behaviour(len(calls))

    monkeypatch.setattr(module, "reconcile", fake)
    ctx = Context(client=None, settings=Settings(retry_delay_s=0.01), metrics=Metrics())  # type: ignore[arg-type]
    return Reconciler(ctx), calls


def _sample(reconciler: Reconciler, name: str, **labels: str) -> float:
    value = reconciler.ctx.metrics.registry.get_sample_value(name, labels)
    return value or 0.0


async def _settle(reconciler: Reconciler) -> None:
    while reconciler._tasks:
        await asyncio.gather(*reconciler._tasks.values())


def test_triggers_during_a_run_coalesce_into_one_more_run(monkeypatch: pytest.MonkeyPatch) -> None:
    release = asyncio.Event()

    async def slow(n: int) -> None:
        if n == 1:
            await release.wait()

    async def scenario() -> list[str]:
        reconciler, calls = _reconciler(monkeypatch, slow)
        reconciler.trigger("ns", "a")
        await asyncio.sleep(0)
        for _ in range(5):
            reconciler.trigger("ns", "a")  # while the first run is in progress
        release.set()
        await _settle(reconciler)
        assert _sample(reconciler, "clipserve_operator_reconciles_total", result="ok") == 2
        return calls

    assert asyncio.run(scenario()) == ["a", "a"]


def test_temporary_error_is_retried_after_its_delay(monkeypatch: pytest.MonkeyPatch) -> None:
    async def scenario() -> tuple[Reconciler, list[str]]:
        retried = asyncio.Event()

        async def flaky(n: int) -> None:
            if n == 1:
                raise kopf.TemporaryError("conflict", delay=0.01)
            retried.set()

        reconciler, calls = _reconciler(monkeypatch, flaky)
        reconciler.trigger("ns", "a")
        await asyncio.wait_for(retried.wait(), timeout=10)
        await _settle(reconciler)
        return reconciler, calls

    reconciler, calls = asyncio.run(scenario())
    assert calls == ["a", "a"]
    assert _sample(reconciler, "clipserve_operator_reconcile_errors_total", kind="temporary") == 1
    assert _sample(reconciler, "clipserve_operator_reconciles_total", result="ok") == 1


def test_permanent_error_waits_for_the_next_change(monkeypatch: pytest.MonkeyPatch) -> None:
    async def broken(n: int) -> None:
        raise kopf.PermanentError("helm template failed")

    async def scenario() -> tuple[Reconciler, list[str]]:
        reconciler, calls = _reconciler(monkeypatch, broken)
        reconciler.trigger("ns", "a")
        await _settle(reconciler)
        await asyncio.sleep(0.05)  # a retry would have run by now (retry_delay_s is 0.01)
        return reconciler, calls

    reconciler, calls = asyncio.run(scenario())
    assert calls == ["a"] and not reconciler._retries
    assert _sample(reconciler, "clipserve_operator_reconcile_errors_total", kind="permanent") == 1


def test_dying_namespace_is_not_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    async def terminating(n: int) -> None:
        raise ApiError(403, "services is forbidden: namespace x because it is being terminated")

    async def scenario() -> Reconciler:
        reconciler, _ = _reconciler(monkeypatch, terminating)
        reconciler.trigger("ns", "a")
        await _settle(reconciler)
        return reconciler

    reconciler = asyncio.run(scenario())
    assert not reconciler._retries
    assert _sample(reconciler, "clipserve_operator_reconcile_errors_total", kind="permanent") == 0


def test_settings_come_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "CLIPSERVE_OPERATOR_HELM": "/opt/helm",
            "CLIPSERVE_OPERATOR_METRICS_PORT": "0",
            "CLIPSERVE_OPERATOR_RESYNC_S": "30",
        }
    )
    assert (settings.helm, settings.metrics_port, settings.resync_s) == ("/opt/helm", 0, 30.0)
    assert Settings.from_env({}).chart.endswith("charts/clipserve")
