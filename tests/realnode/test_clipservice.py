"""ClipServices as real pods on the real node, with the operator in the cluster from its image.

Traffic is real: a client pod calls `status.endpoint` by its DNS name through kube-proxy, while
the tests swap models, delete pods and scale down. Each test asserts what a user would see.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable

from clipserve_operator.constants import OWNER_LABEL

from tests.operator.test_operator_cluster import Watch, slice_slots
from tests.realnode.conftest import (
    CHART_MARKS,
    LOAD_S,
    A,
    B,
    assert_all_served,
    ready_with,
    small_clip,
)
from tests.support.clipservices import (
    clip,
    condition,
    epoch_seconds,
    get,
    items,
    patch,
)
from tests.support.cluster.harness import Cluster
from tests.support.cluster.probe import LoadRun
from tests.support.cluster.realnode import RealNode
from tests.support.polling import eventually

# The first test may wait for another session's real node to stop (one per machine), and for
# the images to be built and imported into the node (minutes).
pytestmark = CHART_MARKS

TEXT = json.dumps([{"text": "a photo of a dog"}])


def test_apply_serves_from_the_endpoint_by_dns_once_the_model_is_warm(
    cluster: Cluster,
    real_node: RealNode,
    operator_pod: str,
    ns: str,
    client: str,
    measure: Callable[[str, float], None],
) -> None:
    t0 = time.monotonic()
    clip(cluster, ns, "search", small_clip(A))
    obj = ready_with(cluster, ns, "search", A, 1)
    measure(
        "kubectl apply -> ClipService Ready (1 pod, ViT-B-32:random on CPU)", time.monotonic() - t0
    )
    pod = items(cluster, "pods", ns, f"{OWNER_LABEL}=search")[0]
    assert pod["spec"]["nodeName"] == real_node.name
    # The DEVICE column: what the pod's own torch reported (its device init container), not the
    # spec's wish.
    assert obj["status"]["device"] == "cpu"
    # Ready came from the server's /readyz, and no sooner than the server called its model warm.
    ready_at = epoch_seconds(condition({"status": pod["status"]}, "Ready")["lastTransitionTime"])
    log = cluster.kubectl("logs", "-n", ns, pod["metadata"]["name"])
    warm = re.search(r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d),\d+ .* ready on cpu", log)
    assert warm, log[-2000:]
    # (Whole seconds on both sides, and the line is logged just after /readyz turns 200: 1 s
    # of slack, against a model load of many seconds.)
    assert ready_at >= epoch_seconds(warm.group(1).replace(" ", "T") + "Z") - 1
    # The SPACE column: the digest the server logged, read by the operator from the pod's log
    # through the apiserver and the real kubelet.
    space = re.search(r": embedding space (random:[0-9a-f]{64}) ", log)
    assert space, log[-2000:]
    digest = space.group(1)

    def active_space() -> str:
        status = (get(cluster, "clipservice", "search", ns) or {}).get("status") or {}
        return str(status.get("activeSpace", ""))

    eventually(lambda: active_space() == digest, "status.activeSpace from the pod's log")
    url = obj["status"]["endpoint"]
    assert url == f"http://search.{ns}.svc.cluster.local:3000"
    out = real_node.exec(ns, client, "/probe", "post", f"{url}/encode", TEXT)
    status_line, body = out.split("\n", 1)
    assert status_line == f"200 {A}"
    embeddings = json.loads(body)
    assert len(embeddings) == 1 and len(embeddings[0]) == 512
    metrics = real_node.exec(ns, client, "/probe", "get", f"{url}/metrics")
    assert re.search(r'clipserve_requests_total\{endpoint="/readyz",status="200"\} [1-9]', metrics)


def test_swap_under_load_fails_nothing_and_never_mixes_models(
    cluster: Cluster,
    real_node: RealNode,
    operator_pod: str,
    ns: str,
    client: str,
    measure: Callable[[str, float], None],
) -> None:
    clip(cluster, ns, "swap", small_clip(A))
    obj = ready_with(cluster, ns, "swap", A, 1)
    slices = Watch(cluster, "endpointslices", "-n", ns, "-l", "kubernetes.io/service-name=swap")
    pods = Watch(cluster, "pods", "-n", ns, "-l", f"{OWNER_LABEL}=swap")
    try:
        with LoadRun(real_node, ns, client, obj["status"]["endpoint"] + "/encode", TEXT) as load:
            load.wait_for(20)
            t0 = time.time()
            patch(cluster, ns, "swap", {"model": B})
            ready_with(cluster, ns, "swap", B, 1)
            promoted = time.time()
            eventually(
                lambda: all(
                    p["metadata"]["name"].startswith("swap-green-")
                    for p in items(cluster, "pods", ns, f"{OWNER_LABEL}=swap")
                ),
                "the old slot's pods to be gone",
                LOAD_S,
            )
            done = time.time()
            count = len(load.results)
            load.wait_for(count + 20)  # keep the stream going after the swap completed
            results = load.stop()
    finally:
        slices.stop()
        pods.stop()
    assert_all_served(results, {A, B})
    assert {r.model for r in results if r.start < t0} == {A}
    assert {r.model for r in results if r.start > done} == {B}
    mixed = [s["metadata"]["name"] for s in slices.objects if len(slice_slots(s, "swap")) > 1]
    assert mixed == [], "an EndpointSlice listed pods of both models"
    first_b = min(r.start for r in results if r.model == B)
    last_a = max(r.start + r.ms / 1000 for r in results if r.model == A)
    measure("swap: patch -> new model promoted (status)", promoted - t0)
    measure("swap: patch -> old slot's pods gone", done - t0)
    measure("swap: responses of both models interleaved for", max(0.0, last_a - first_b))
    new_pod_created = min(
        epoch_seconds(p["metadata"]["creationTimestamp"])
        for p in pods.objects
        if p["metadata"]["name"].startswith("swap-green-")
    )
    measure("swap: pods of both slots existed side by side for", done - new_pod_created)


def test_pod_loss_and_scale_down_under_load_fail_nothing(
    cluster: Cluster, real_node: RealNode, operator_pod: str, ns: str, client: str
) -> None:
    clip(cluster, ns, "loss", small_clip(A, replicas=2))
    obj = ready_with(cluster, ns, "loss", A, 2)
    with LoadRun(real_node, ns, client, obj["status"]["endpoint"] + "/encode", TEXT) as load:
        load.wait_for(20)
        victim = items(cluster, "pods", ns, f"{OWNER_LABEL}=loss")[0]["metadata"]["name"]
        cluster.kubectl("delete", "pod", victim, "-n", ns, "--wait=true", timeout=180)
        ready_with(cluster, ns, "loss", A, 2)  # the Deployment's replacement is serving
        count = len(load.results)
        load.wait_for(count + 20)
        cluster.kubectl("scale", "clipservice/loss", "-n", ns, "--replicas=1")
        ready_with(cluster, ns, "loss", A, 1)
        eventually(
            lambda: len(items(cluster, "pods", ns, f"{OWNER_LABEL}=loss")) == 1,
            "one pod left",
            LOAD_S,
        )
        count = len(load.results)
        load.wait_for(count + 20)
        results = load.stop()
    assert_all_served(results, {A})


def test_a_model_that_cannot_load_degrades_with_the_servers_error_while_the_old_one_serves(
    cluster: Cluster, real_node: RealNode, operator_pod: str, ns: str, client: str
) -> None:
    clip(cluster, ns, "broken", small_clip(A))
    obj = ready_with(cluster, ns, "broken", A, 1)
    missing = "ViT-B-32:/models/does-not-exist.pt"
    with LoadRun(real_node, ns, client, obj["status"]["endpoint"] + "/encode", TEXT) as load:
        load.wait_for(20)
        patch(cluster, ns, "broken", {"model": missing})
        degraded = eventually(
            lambda: (
                (o := get(cluster, "clip", "broken", ns))
                and condition(o, "Degraded").get("status") == "True"
                and o
            ),
            "Degraded",
            LOAD_S,
        )
        count = len(load.results)
        load.wait_for(count + 20)
        results = load.stop()
    message = condition(degraded, "Degraded")["message"]
    assert "does-not-exist.pt" in message, message
    assert degraded["status"]["activeModel"] == A and degraded["status"]["pendingModel"] == missing
    assert_all_served(results, {A})
