"""Autoscaling that really scales: ClipServices on the real node, under real load, scaled by a
real HPA on their queue depth (Prometheus -> prometheus-adapter), or by KEDA down to zero and
back through the gate.

A client pod drives the ClipService's endpoint by its DNS name through kube-proxy, one new
connection per request (so that a new pod gets its share as soon as it is an endpoint), and every
answer is kept: none may fail while replicas come and go. Durations and queue waits are recorded
with `measure` (shown after the run), never asserted.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any

import pytest

from tests.operator.test_operator_cluster import OWNER_LABEL, Watch
from tests.realnode.conftest import CHART_MARKS, A, small_clip
from tests.support.clipservices import clip, condition, get, items
from tests.support.cluster.harness import Cluster, KubectlError
from tests.support.cluster.monitoring import Prometheus
from tests.support.cluster.probe import LoadRun, Result
from tests.support.cluster.realnode import RealNode
from tests.support.running import wait_for

pytestmark = [*CHART_MARKS, pytest.mark.prometheus]

# Bounds on waits on a shared 2-core machine; they measure nothing.
LOAD_S = 600
QUEUE_PER_POD = 4
# Four texts per request, eight requests in flight: ~30 items queued on one pod, far past 4.
HEAVY = json.dumps([{"text": f"a photo of a dog, take {i}"} for i in range(4)])
LIGHT = json.dumps([{"text": "a photo of a cat"}])
# The server's stage timer behind the queue-wait p95 (clipserve.metrics).
QUEUE_WAIT = "clipserve_queue_wait_seconds_bucket"


def spec(values: dict[str, Any], **autoscaling: Any) -> dict[str, Any]:
    """A small CPU ClipService on the real node: one compute worker, so one pod saturates."""
    # The load repeats its texts: with the embedding cache on, every request after the first is
    # a cache hit that never queues, and the queue depth the HPA reads stays 0.
    no_cache = {"embeddingCache": {"sizeMB": 0}}
    return small_clip(A, None, values={**no_cache, **values}, **autoscaling)


# Fast for the test (a user's scale-down window is minutes): add a pod at once, remove one after
# 30 s without a reason to keep it.
BEHAVIOR = {
    "scaleUp": {
        "stabilizationWindowSeconds": 0,
        "policies": [{"type": "Pods", "value": 1, "periodSeconds": 15}],
    },
    "scaleDown": {
        "stabilizationWindowSeconds": 30,
        "policies": [{"type": "Pods", "value": 1, "periodSeconds": 15}],
    },
}


def assert_all_served(results: list[Result], items_each: int) -> None:
    """Every request answered 200 with one embedding per item."""
    failed = [r for r in results if not (r.ok and r.items == items_each)]
    assert not failed, f"{len(failed)} of {len(results)} requests failed, first: {failed[:3]}"


def pods_serving(prom: Prometheus, ns: str) -> dict[str, float]:
    """Requests each pod of the namespace has answered on /encode, as Prometheus scraped them."""
    query = f'sum by (pod) (clipserve_requests_total{{namespace="{ns}",endpoint="/encode"}})'
    return {r["metric"]["pod"]: float(r["value"][1]) for r in prom.query(query)}


def queue_wait_p95(prom: Prometheus, ns: str, start: float, end: float) -> float | None:
    """p95 of the time items waited for a forward pass in [start, end], every pod together."""
    window = max(4, round(end - start))
    expr = (
        f'histogram_quantile(0.95, sum by (le) (rate({QUEUE_WAIT}{{namespace="{ns}"}}[{window}s])))'
    )
    return prom.value(expr, at=end)


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))]


def test_queue_depth_scales_out_under_load_and_back_in_after_it_failing_nothing(
    cluster: Cluster,
    real_node: RealNode,
    metrics_pipeline: Prometheus,
    operator_pod: str,
    ns: str,
    client: str,
    measure: Callable[[str, float], None],
) -> None:
    prom = metrics_pipeline
    autoscaling = {"minReplicas": 1, "maxReplicas": 2, "queueDepthPerPod": QUEUE_PER_POD}
    clip(
        cluster,
        ns,
        "auto",
        spec(autoscaling=autoscaling, values={"autoscaling": {"behavior": BEHAVIOR}}),
    )
    obj = wait_for(
        "1 ready pod and an HPA reading the queue depth",
        lambda: (
            (o := get(cluster, "clip", "auto", ns))
            and o.get("status", {}).get("readyReplicas") == 1
            and (o["status"].get("autoscaler") or {}).get("canScale")
            and o
        ),
        timeout=LOAD_S,
    )
    # The custom metric reached the HPA: queue depth 0 against its target, before any load.
    assert obj["status"]["autoscaler"]["metrics"] == [f"clipserve_queue_depth 0/{QUEUE_PER_POD}"]
    (first,) = [p["metadata"]["name"] for p in items(cluster, "pods", ns, f"{OWNER_LABEL}=auto")]
    url = obj["status"]["endpoint"] + "/encode"
    deployments = Watch(cluster, "deployment", "auto-blue", "-n", ns)
    try:
        with LoadRun(
            real_node, ns, client, url, HEAVY, workers=8, interval_ms=0, keepalive=False
        ) as heavy:
            heavy.wait_for(1)
            t_load = min(r.start for r in heavy.results)
            peak = wait_for(
                "the HPA to want 2 pods",
                lambda: (
                    (o := get(cluster, "clip", "auto", ns))
                    and (o["status"].get("autoscaler") or {}).get("desiredReplicas") == 2
                    and o
                ),
                timeout=LOAD_S,
            )
            t_decided = time.time()
            second = wait_for(
                "a second pod to answer requests",
                lambda: next(
                    (p for p, n in pods_serving(prom, ns).items() if p != first and n > 0), None
                ),
                timeout=LOAD_S,
            )
            t_serving = time.time()
            time.sleep(40)  # both pods under the same load, for the "after" queue wait
            t_after = time.time()
            heavy_results = heavy.stop()
        with LoadRun(
            real_node, ns, client, url, LIGHT, workers=1, interval_ms=500, keepalive=False
        ) as light:
            light.wait_for(5)
            wait_for(
                "the HPA to scale back to 1 pod after its window",
                lambda: (
                    [
                        p["metadata"]["name"]
                        for p in items(cluster, "pods", ns, f"{OWNER_LABEL}=auto")
                        if not p["metadata"].get("deletionTimestamp")
                    ]
                    in ([first], [second])
                ),
                timeout=LOAD_S,
            )
            t_down = time.time()
            wait_for(
                "the removed pod to be gone",
                lambda: len(items(cluster, "pods", ns, f"{OWNER_LABEL}=auto")) == 1,
                timeout=LOAD_S,
            )
            light.wait_for(len(light.results) + 10)
            light_results = light.stop()
    finally:
        deployments.stop()

    assert_all_served(heavy_results, 4)
    assert_all_served(light_results, 1)
    autoscaler = peak["status"]["autoscaler"]
    assert autoscaler["canScale"] is True and autoscaler["name"] == "auto-blue"
    depth = autoscaler["metrics"][0].removeprefix("clipserve_queue_depth ").split("/")
    assert depth[1] == str(QUEUE_PER_POD) and depth[0] != "?"
    # Only the HPA moved the replicas, from 1 to 2 and back to 1 within its bounds, while the
    # ClipService's own spec.replicas stayed as it was and the operator never applied the field.
    # The HPA may go back and forth on the way (seen once in five runs: 1 2 1 2 1): the queue
    # depth it reads counts items waiting for a forward pass, and a pod whose batch takes in
    # all that is waiting reads near 0 while busy. That is the signal's nature, not a second
    # writer; the note on issue 25 says so.
    seen = [d["spec"]["replicas"] for d in deployments.objects]
    changes = [n for i, n in enumerate(seen) if i == 0 or n != seen[i - 1]]
    assert changes[0] == changes[-1] == 1 and set(changes) == {1, 2}, changes
    final = json.loads(
        cluster.kubectl(
            "get", "deployment", "auto-blue", "-n", ns, "-o", "json", "--show-managed-fields"
        )
    )
    # Scales through the /scale subresource (the HPA's, and kubectl scale's) leave no
    # managedFields entry on this API server, so what can be asserted is that the operator's own
    # apply never claimed the field.
    owners = [
        m["manager"]
        for m in final["metadata"]["managedFields"]
        if "f:replicas" in m.get("fieldsV1", {}).get("f:spec", {})
    ]
    assert "clipserve-operator" not in owners, owners
    assert any(m["manager"] == "clipserve-operator" for m in final["metadata"]["managedFields"])
    done = wait_for(
        "the status to follow the HPA back to 1",
        lambda: (
            (o := get(cluster, "clip", "auto", ns))
            and o["status"]["replicas"] == 1
            and o["status"]["autoscaler"]["currentReplicas"] == 1
            and o
        ),
    )
    assert done["spec"].get("replicas", 1) == 1

    before = queue_wait_p95(prom, ns, t_load, t_serving)
    after = queue_wait_p95(prom, ns, t_serving, t_after)
    measure("HPA: load start -> HPA wants 2 pods", t_decided - t_load)
    measure(
        "HPA: load start -> second pod serving (Prometheus sees its answers)", t_serving - t_load
    )
    measure("HPA: load end -> back to 1 pod (30 s window)", t_down - t_after)
    if before is not None and after is not None:
        measure("HPA: queue wait p95, 1 pod under the load", before)
        measure("HPA: queue wait p95, 2 pods under the same load", after)
    ms_before = [r.ms for r in heavy_results if r.start < t_decided]
    ms_after = [r.ms for r in heavy_results if r.start > t_serving]
    measure("HPA: request p95, 1 pod under the load", p95(ms_before) / 1000)
    measure("HPA: request p95, 2 pods under the same load", p95(ms_after) / 1000)


def post_status(real_node: RealNode, ns: str, client: str, url: str) -> tuple[str, str]:
    """One POST from the client pod: its status line and body (a non-2xx exits 1)."""
    try:
        out = real_node.exec(ns, client, "/probe", "post", url, LIGHT)
    except KubectlError as exc:
        if not exc.stdout:  # no HTTP answer at all: say why (the probe's or kubectl's words)
            raise AssertionError(f"POST {url} got no answer: {exc.stderr.strip()}") from exc
        out = exc.stdout
    status_line, _, body = out.partition("\n")
    return status_line, body


def server_pods(cluster: Cluster, ns: str) -> list[dict[str, Any]]:
    """The pods of ClipService cold's server slot (not its gate), terminating ones included."""
    return [
        p
        for p in items(cluster, "pods", ns, f"{OWNER_LABEL}=cold")
        if p["metadata"]["name"].startswith("cold-blue-")
    ]


def test_keda_scales_to_zero_and_the_first_request_meets_the_gates_503(
    cluster: Cluster,
    real_node: RealNode,
    keda: Any,
    operator_pod: str,
    ns: str,
    client: str,
    measure: Callable[[str, float], None],
) -> None:
    values = {
        "keda": {
            "enabled": True,
            "minReplicas": 0,
            "maxReplicas": 2,
            "pollingInterval": 2,
            "cooldownPeriod": 20,
            "prometheus": {"threshold": QUEUE_PER_POD},
            "gate": {"retryAfterSeconds": 5},
        }
    }
    clip(cluster, ns, "cold", spec(values=values))
    # Idle from the start: KEDA takes the servers to zero; the gate stays up as the endpoint.
    # Zero means no server pod left: a terminating one still serves what kube-proxy sends it.
    idle = wait_for(
        "scaled to zero with the gate ready",
        lambda: (
            (o := get(cluster, "clip", "cold", ns))
            and o.get("status", {}).get("replicas") == 0
            and (get(cluster, "deployment", "cold-gate", ns) or {})
            .get("status", {})
            .get("readyReplicas")
            == 1
            and not server_pods(cluster, ns)
            and o
        ),
        timeout=LOAD_S,
    )
    url = idle["status"]["endpoint"] + "/encode"
    assert url == f"http://cold-gate.{ns}.svc.cluster.local:3000/encode"
    assert condition(idle, "Ready")["reason"] == "ScaledToZero"
    # What the first request meets: the gate's 503 at once, saying when to come back.
    t_first = time.time()
    status_line, body = post_status(real_node, ns, client, url)
    assert status_line == "503 ", (status_line, body)
    assert "retry after 5 s" in json.loads(body)["detail"]
    # That request woke the service: a client retrying every second sees 503s, then answers.
    with LoadRun(
        real_node, ns, client, url, LIGHT, workers=1, interval_ms=1000, keepalive=False
    ) as load:
        first_ok = wait_for(
            "the first answer from a server",
            lambda: next((r for r in load.results if r.ok), None),
            timeout=LOAD_S,
        )
        load.wait_for(len(load.results) + 5)
        results = load.stop()
    t_last = max(r.start + r.ms / 1000 for r in results)
    statuses = [r.status for r in results]
    first = statuses.index(200)
    assert set(statuses[:first]) <= {503} and set(statuses[first:]) == {200}, statuses
    assert_all_served(results[first:], 1)
    woken = wait_for(
        "the autoscaler's state once a pod serves",
        lambda: (
            (o := get(cluster, "clip", "cold", ns))
            and (o["status"].get("autoscaler") or {}).get("currentReplicas") == 1
            and o
        ),
    )
    assert woken["status"]["autoscaler"]["name"] == "keda-hpa-cold-blue"
    # Idle again: back to zero after the cooldown, and the gate answers 503 again.
    wait_for(
        "scaled back to zero after the cooldown",
        lambda: (o := get(cluster, "clip", "cold", ns)) and o["status"].get("replicas") == 0 and o,
        timeout=LOAD_S,
    )
    t_zero = time.time()
    wait_for("the last server pod gone", lambda: not server_pods(cluster, ns), timeout=LOAD_S)
    # One snapshot says one thing: at zero, every field says zero (KEDA's HPA may not have
    # synced yet; the status must not show its stale view). Read before the next request,
    # which wakes the service again.
    scaled = get(cluster, "clip", "cold", ns)
    assert scaled is not None
    at_zero = scaled["status"]
    assert at_zero["replicas"] == 0, at_zero
    assert condition(scaled, "Ready")["reason"] == "ScaledToZero", at_zero
    assert at_zero["autoscaler"]["reason"] == "ScaledToZero", at_zero
    assert at_zero["autoscaler"]["currentReplicas"] == 0, at_zero
    assert post_status(real_node, ns, client, url)[0] == "503 "
    measure("KEDA: first request (503) -> first 200 through the gate", first_ok.start - t_first)
    measure("KEDA: last request -> scaled to zero (20 s cooldown)", t_zero - t_last)
