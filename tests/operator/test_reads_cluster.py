"""What the operator reads per reconcile, counted on its own API client (tests/support/api_calls):
the kinds it watches are read from kopf's indexes, so a pass lists none of them (prune aside,
which lists what it may delete, and runs only when the rendered set changes)."""

from __future__ import annotations

import time
from collections import Counter
from typing import Any

import pytest

from tests.support.api_calls import ApiCalls, Call, recorded, table
from tests.support.clipservices import clip, fully_ready, get, patch
from tests.support.cluster.harness import Cluster
from tests.support.running import OperatorRun, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.helm, pytest.mark.slow]

CPU_POOL = {"clipserve.io/node-pool": "cpu"}
A, B = "ViT-B-32:random", "ViT-B-16:random"
# The children kopf watches (handlers.py), each with an index.
INDEXED = {"deployments", "pods", "jobs", "services", "horizontalpodautoscalers"}
QUIET_S = 3.0  # no reconcile for this long: the ClipService has settled


def _reconciles(operator: OperatorRun) -> float:
    return sum(
        operator.metric("clipserve_operator_reconciles_total", f'result="{r}"')
        for r in ("ok", "error")
    )


def _settled(operator: OperatorRun) -> None:
    """Wait until no reconcile has run for QUIET_S (the rollout's events have all been seen)."""
    last = [_reconciles(operator), time.monotonic()]

    def quiet() -> bool:
        now = _reconciles(operator)
        if now != last[0]:
            last[:] = [now, time.monotonic()]
        return time.monotonic() - last[1] >= QUIET_S

    wait_for("no more reconciles", quiet)


def _by_kind(passes: list[list[Call]]) -> str:
    """Each reconcile's calls, for the failure message and `pytest -s`."""
    return "\n".join(
        f"reconcile {i + 1}:\n{table(Counter(str(c) for c in calls))}"
        for i, calls in enumerate(passes)
    )


def _lists_of_indexed(calls: list[Call]) -> list[str]:
    return [str(c) for c in calls if c.verb == "list" and c.resource in INDEXED]


def _poked(cluster: Cluster, operator: OperatorRun, ns: str, name: str, calls: ApiCalls) -> None:
    """One reconcile of a settled ClipService: a ClipService event with nothing to change."""
    done = _reconciles(operator)
    calls.clear()
    cluster.kubectl("annotate", "clip", name, "-n", ns, "--overwrite", "example.com/poke=1")
    wait_for("a reconcile", lambda: _reconciles(operator) > done)
    _settled(operator)


@pytest.mark.parametrize(
    "spec",
    [
        {"model": A, "replicas": 2},
        {"model": A, "autoscaling": {"minReplicas": 2, "maxReplicas": 3}},
        {"model": A, "replicas": 1, "modelCache": {"type": "shared", "size": "1Gi"}},
    ],
    ids=["replicas", "autoscaled", "shared-cache"],
)
def test_a_settled_reconcile_lists_nothing_the_operator_watches(
    cluster: Cluster,
    running_operator: OperatorRun,
    ns: str,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    spec: dict[str, Any],
) -> None:
    spec = {**spec, "nodePool": {"nodeSelector": CPU_POOL}}
    if "modelCache" in spec:
        volume = request.getfixturevalue("volume")
        spec["modelCache"] = {**spec["modelCache"], "storageClassName": volume}
    want = spec.get("replicas") or spec["autoscaling"]["minReplicas"]
    clip(cluster, ns, "calm", spec)
    wait_for(
        f"{want} ready pods",
        lambda: (o := fully_ready(cluster, ns, "calm")) and o["status"]["readyReplicas"] == want,
    )
    _settled(running_operator)
    with recorded(monkeypatch) as calls:
        _poked(cluster, running_operator, ns, "calm", calls)
    passes = calls.passes(ns, "calm")
    print(f"\n{spec}\n{_by_kind(passes)}")
    assert passes, calls.calls
    assert [c for p in passes for c in _lists_of_indexed(p)] == [], _by_kind(passes)


@pytest.mark.parametrize(
    "cache", [{}, {"type": "shared", "size": "1Gi"}], ids=["blue-green", "shared-cache"]
)
def test_a_swap_lists_no_pods_and_the_rest_only_to_prune(
    cluster: Cluster,
    running_operator: OperatorRun,
    ns: str,
    request: pytest.FixtureRequest,
    monkeypatch: pytest.MonkeyPatch,
    cache: dict[str, str],
) -> None:
    spec: dict[str, Any] = {"model": A, "replicas": 2, "nodePool": {"nodeSelector": CPU_POOL}}
    if cache:
        spec["modelCache"] = {**cache, "storageClassName": request.getfixturevalue("volume")}
    clip(cluster, ns, "swap", spec)
    wait_for(
        "Ready",
        lambda: (o := fully_ready(cluster, ns, "swap")) and o["status"]["readyReplicas"] == 2,
    )
    _settled(running_operator)
    with recorded(monkeypatch) as calls:
        patch(cluster, ns, "swap", {"model": B})
        wait_for(
            "the swap, the Service moved and the old slot pruned",
            lambda: (
                fully_ready(cluster, ns, "swap")
                and get(cluster, "deployment", "swap-blue", ns) is None
            ),
        )
        _settled(running_operator)
    passes = calls.passes(ns, "swap")
    print(f"\nswap A -> B, {spec}, {len(passes)} reconciles:\n{_by_kind(passes)}")
    print(f"in all:\n{table(Counter(str(c) for p in passes for c in p))}")
    for calls_of_one in passes:
        lists = Counter(_lists_of_indexed(calls_of_one))
        # A pass that prunes lists each kind it may delete once (Deployments, Services, HPAs,
        # Jobs among them, never pods); nothing else lists a watched kind.
        assert lists["list pods"] == 0, _by_kind(passes)
        assert all(n <= 1 for n in lists.values()), _by_kind(passes)
