"""The operator against the real control plane (pods simulated by kwok), as its chart's RBAC.

Each test creates ClipServices in a fresh namespace and asserts what a platform user would see:
objects, pod placement, the Service's EndpointSlices through a swap, status and events.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.support.clipservices import clip, condition, events, fully_ready, get, items, patch
from tests.support.cluster.harness import Cluster, KubectlError
from tests.support.running import REPO, OperatorRun, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.helm, pytest.mark.slow]


def _pool(example: Path) -> str:
    return str(yaml.safe_load(example.read_text())["spec"]["nodePool"]["nodeSelector"][POOL])


POOL = "clipserve.io/node-pool"
# The kwok pools' examples; the real node's (the README's walkthrough) runs in
# tests/walkthrough/test_walkthrough.py, on a cluster that has that node.
EXAMPLES = [p for p in sorted((REPO / "manifests/examples").glob("*.yaml")) if _pool(p) != "real"]
CPU_POOL = {"clipserve.io/node-pool": "cpu"}
OWNER_LABEL = "clipserve.io/clipservice"
A, B, C = "ViT-B-32:random", "ViT-B-16:random", "RN50:random"


# --- helpers -------------------------------------------------------------------------------------


class Watch:
    """`kubectl get --watch` in the background, collecting every event's object."""

    def __init__(self, cluster: Cluster, *args: str) -> None:
        cmd = [
            str(cluster.bin_dir / "kubectl"),
            f"--kubeconfig={cluster.kubeconfig}",
            "get",
            *args,
            "--watch",
            "--output-watch-events",
            "-o",
            "json",
        ]
        self.objects: list[dict[str, Any]] = []
        self._proc = subprocess.Popen(
            cmd, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        # kubectl writes one JSON document per event (compact in watch mode); decode a stream.
        decoder, buf = json.JSONDecoder(), ""
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            buf += line
            while buf.strip():
                try:
                    event, end = decoder.raw_decode(buf.lstrip())
                except json.JSONDecodeError:
                    break  # incomplete document: read more
                self.objects.append(event["object"])
                buf = buf.lstrip()[end:]

    def stop(self) -> None:
        """End the watch."""
        self._proc.terminate()
        self._proc.wait(timeout=10)
        self._thread.join(timeout=10)


def service_slot(cluster: Cluster, ns: str, name: str) -> str:
    """The slot the Service selects."""
    return get(cluster, "service", name, ns)["spec"]["selector"].get("clipserve.io/slot", "")


def slice_slots(endpoint_slice: dict[str, Any], name: str) -> set[str]:
    """Slots of the pods an EndpointSlice lists (pod names are <name>-<slot>-<rs>-<id>)."""
    slots = set()
    for endpoint in endpoint_slice.get("endpoints") or []:
        pod = (endpoint.get("targetRef") or {}).get("name", "")
        for slot in ("blue", "green"):
            if pod.startswith(f"{name}-{slot}-"):
                slots.add(slot)
    return slots


# --- the proofs --------------------------------------------------------------------------------


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_example_reaches_ready_with_pods_on_its_node_pool(
    cluster: Cluster, running_operator: OperatorRun, ns: str, example: Path
) -> None:
    doc = yaml.safe_load(example.read_text())
    name, spec = doc["metadata"]["name"], doc["spec"]
    cluster.kubectl("apply", "-n", ns, "-f", str(example))
    obj = wait_for(f"{name} Ready", lambda: fully_ready(cluster, ns, name))
    want = spec["autoscaling"]["minReplicas"] if "autoscaling" in spec else spec["replicas"]
    # With autoscaling the HPA raises the Deployment to minReplicas; the status follows it.
    obj = wait_for(
        f"{name} at {want} ready pods",
        lambda: (
            (o := fully_ready(cluster, ns, name)) and o["status"]["readyReplicas"] == want and o
        ),
    )
    assert obj["status"]["endpoint"] == f"http://{name}.{ns}.svc.cluster.local:3000"
    pods = items(cluster, "pods", ns, f"{OWNER_LABEL}={name}")
    pool = spec["nodePool"]["nodeSelector"]["clipserve.io/node-pool"]
    nodes = {p["spec"]["nodeName"] for p in pods}
    assert len(pods) == want and all(n.startswith(f"{pool}-") for n in nodes), nodes
    row = cluster.kubectl("get", "clip", name, "-n", ns, "--no-headers").split()
    assert row[:4] == [name, spec["model"], "True", f"{want}/{want}"]


def test_kubectl_scale_changes_replicas(
    cluster: Cluster, running_operator: OperatorRun, ns: str
) -> None:
    clip(cluster, ns, "scaled", {"model": A, "replicas": 1, "nodePool": {"nodeSelector": CPU_POOL}})
    wait_for("Ready", lambda: fully_ready(cluster, ns, "scaled"))
    cluster.kubectl("scale", "clipservice/scaled", "-n", ns, "--replicas=3")
    wait_for(
        "3 ready pods",
        lambda: (o := fully_ready(cluster, ns, "scaled")) and o["status"]["readyReplicas"] == 3,
    )
    assert get(cluster, "deployment", "scaled-blue", ns)["spec"]["replicas"] == 3
    scale = json.loads(
        cluster.kubectl(
            "get", "--raw", f"/apis/clipserve.io/v1alpha1/namespaces/{ns}/clipservices/scaled/scale"
        )
    )
    assert (
        scale["status"]["replicas"] == 3 and "clipserve.io/slot=blue" in scale["status"]["selector"]
    )


def test_autoscaled_service_leaves_replicas_to_the_hpa(
    cluster: Cluster, running_operator: OperatorRun, ns: str
) -> None:
    clip(
        cluster,
        ns,
        "auto",
        {
            "model": A,
            "nodePool": {"nodeSelector": CPU_POOL},
            "autoscaling": {"minReplicas": 2, "maxReplicas": 5},
        },
    )
    wait_for(
        "HPA to scale to minReplicas",
        lambda: (d := get(cluster, "deployment", "auto-blue", ns)) and d["spec"]["replicas"] == 2,
    )
    cluster.kubectl("scale", "clipservice/auto", "-n", ns, "--replicas=4")
    obj = wait_for("the scale to be reconciled", lambda: fully_ready(cluster, ns, "auto"))
    assert obj["spec"]["replicas"] == 4
    deployment = json.loads(
        cluster.kubectl(
            "get", "deployment", "auto-blue", "-n", ns, "-o", "json", "--show-managed-fields"
        )
    )
    assert deployment["spec"]["replicas"] == 2  # still the HPA's choice
    ours = [
        m for m in deployment["metadata"]["managedFields"] if m["manager"] == "clipserve-operator"
    ]
    assert ours and all("f:replicas" not in m["fieldsV1"].get("f:spec", {}) for m in ours)
    # A real HPA controller acts on it: this cluster has no resource metrics API (kwok pods use
    # no CPU), so the status says the HPA cannot scale, and why, in the controller's words.
    obj = wait_for(
        "the autoscaler's state in the status",
        lambda: (
            (o := get(cluster, "clipservice", "auto", ns))
            and (o["status"].get("autoscaler") or {}).get("reason") == "FailedGetResourceMetric"
            and o
        ),
    )
    autoscaler = obj["status"]["autoscaler"]
    assert autoscaler["name"] == "auto-blue" and autoscaler["canScale"] is False
    assert "cpu" in autoscaler["message"] and "metrics API" in autoscaler["message"]
    assert (autoscaler["minReplicas"], autoscaler["maxReplicas"]) == (2, 5)
    assert autoscaler["currentReplicas"] == 2 and autoscaler["metrics"] == ["cpu ?/80%"]


def test_model_swap_never_puts_two_slots_in_one_endpoint_slice(
    cluster: Cluster, running_operator: OperatorRun, ns: str
) -> None:
    clip(cluster, ns, "swap", {"model": A, "replicas": 2, "nodePool": {"nodeSelector": CPU_POOL}})
    wait_for(
        "Ready",
        lambda: (o := fully_ready(cluster, ns, "swap")) and o["status"]["readyReplicas"] == 2,
    )
    slices = Watch(cluster, "endpointslices", "-n", ns, "-l", "kubernetes.io/service-name=swap")
    statuses = Watch(cluster, "clipservice", "swap", "-n", ns)
    try:
        wait_for(
            "blue endpoints",
            lambda: any(slice_slots(s, "swap") == {"blue"} for s in slices.objects),
        )
        patch(cluster, ns, "swap", {"model": B})
        obj = wait_for("the swap", lambda: fully_ready(cluster, ns, "swap"))
        wait_for(
            "green endpoints",
            lambda: any(slice_slots(s, "swap") == {"green"} for s in slices.objects),
        )
    finally:
        slices.stop()
        statuses.stop()
    mixed = [s["metadata"]["name"] for s in slices.objects if len(slice_slots(s, "swap")) > 1]
    assert mixed == [], "an EndpointSlice listed pods of both models"
    assert obj["status"]["activeModel"] == B and obj["status"]["activeSlot"] == "green"
    # Documented progression: (A, "") -> (A, pending B) -> (B, "").
    seen = [
        ((o.get("status") or {}).get("activeModel"), (o.get("status") or {}).get("pendingModel"))
        for o in statuses.objects
    ]
    steps = [s for i, s in enumerate(seen) if s[0] and (i == 0 or s != seen[i - 1])]
    assert steps[0] == (A, "") and steps[-1] == (B, "") and (A, B) in steps and (B, B) not in steps
    assert get(cluster, "deployment", "swap-blue", ns) is None
    # Status records the promotion first (so a crash cannot roll it back), then the Service moves.
    wait_for("the Service to move", lambda: service_slot(cluster, ns, "swap") == "green")
    reasons = [e["reason"] for e in events(cluster, ns, "swap")]
    assert "SwapStarted" in reasons and "SwapCompleted" in reasons


def test_rolling_swap_updates_the_serving_slot_in_place(
    cluster: Cluster, running_operator: OperatorRun, ns: str
) -> None:
    spec = {
        "model": A,
        "replicas": 2,
        "swapStrategy": "Rolling",
        "nodePool": {"nodeSelector": CPU_POOL},
    }
    clip(cluster, ns, "roll", spec)
    wait_for("Ready", lambda: fully_ready(cluster, ns, "roll"))
    patch(cluster, ns, "roll", {"model": B})
    obj = wait_for("the rollout", lambda: fully_ready(cluster, ns, "roll"))
    assert (obj["status"]["activeModel"], obj["status"]["activeSlot"]) == (B, "blue")
    deployments = items(cluster, "deployments", ns, f"{OWNER_LABEL}=roll")
    assert [d["metadata"]["name"] for d in deployments] == ["roll-blue"]
    assert deployments[0]["metadata"]["annotations"]["clipserve.io/model"] == B


def test_missing_servicemonitor_crd_degrades_but_still_serves(
    cluster: Cluster, running_operator: OperatorRun, ns: str
) -> None:
    spec = {
        "model": A,
        "replicas": 1,
        "nodePool": {"nodeSelector": CPU_POOL},
        "monitoring": {"serviceMonitor": True},
    }
    clip(cluster, ns, "mon", spec)
    obj = wait_for(
        "Ready despite the failure",
        lambda: (
            (o := get(cluster, "clip", "mon", ns))
            and condition(o, "Ready").get("status") == "True"
            and condition(o, "Degraded").get("status") == "True"
            and o
        ),
    )
    degraded = condition(obj, "Degraded")
    assert degraded["reason"] == "ReconcileFailed"
    assert "monitoring.coreos.com/v1 ServiceMonitor" in degraded["message"]
    assert get(cluster, "service", "mon", ns) is not None
    patch(cluster, ns, "mon", {"monitoring": {"serviceMonitor": False}})
    wait_for(
        "recovery",
        lambda: (
            (o := fully_ready(cluster, ns, "mon")) and condition(o, "Degraded")["status"] == "False"
        ),
    )


def test_too_many_gpus_is_degraded_with_the_scheduler_reason_and_recovers(
    cluster: Cluster, running_operator: OperatorRun, ns: str
) -> None:
    gpu_pool = {"nodeSelector": {"clipserve.io/node-pool": "gpu"}}
    clip(cluster, ns, "big", {"model": A, "replicas": 1, "gpu": {"count": 5}, "nodePool": gpu_pool})
    degraded = wait_for(
        "Degraded",
        lambda: (
            (c := condition(get(cluster, "clip", "big", ns), "Degraded")).get("status") == "True"
            and c
        ),
    )
    assert degraded["reason"] == "Unschedulable"
    assert "Insufficient nvidia.com/gpu" in degraded["message"]
    assert condition(get(cluster, "clip", "big", ns), "Ready")["status"] == "False"
    warnings = [e for e in events(cluster, ns, "big") if e["type"] == "Warning"]
    assert any("Insufficient nvidia.com/gpu" in e["message"] for e in warnings)
    patch(cluster, ns, "big", {"gpu": {"count": 1}})
    obj = wait_for(
        "recovery",
        lambda: (
            (o := fully_ready(cluster, ns, "big"))
            and condition(o, "Degraded")["status"] == "False"
            and o
        ),
    )
    assert obj["status"]["readyReplicas"] == 1


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"model": "ViT-B-32"}, "model must look like ARCH:TAG"),
        (
            {"model": "ViT-B-32:openai", "autoscaling": {"minReplicas": 5, "maxReplicas": 2}},
            "minReplicas must be <= autoscaling.maxReplicas",
        ),
        ({"model": "ViT-B-32:openai", "gpu": {"count": -1}}, "spec.gpu.count"),
        ({"model": "ViT-B-32:openai", "swapStrategy": "Canary"}, "spec.swapStrategy"),
        ({"model": "ViT-B-32:openai", "replicas": "two"}, "spec.replicas"),
        (
            {"model": "ViT-B-32:openai", "modelCache": {"type": "existingClaim"}},
            "existingClaim is required",
        ),
    ],
    ids=[
        "model-format",
        "min-gt-max",
        "negative-gpus",
        "unknown-strategy",
        "replicas-type",
        "claim-missing",
    ],
)
def test_invalid_spec_is_rejected_at_apply_time(
    cluster: Cluster, running_operator: OperatorRun, ns: str, spec: dict[str, Any], message: str
) -> None:
    with pytest.raises(KubectlError) as err:
        clip(cluster, ns, "bad", spec)
    assert message in err.value.stderr
    assert get(cluster, "clip", "bad", ns) is None


def test_restart_mid_swap_completes_the_swap_and_a_second_change_wins(
    cluster: Cluster, running_operator: OperatorRun, ns: str
) -> None:
    clip(cluster, ns, "rs", {"model": A, "replicas": 1, "nodePool": {"nodeSelector": CPU_POOL}})
    wait_for("Ready", lambda: fully_ready(cluster, ns, "rs"))
    cpu_nodes = ("cpu-0", "cpu-1")
    cluster.kubectl("cordon", *cpu_nodes)  # the new slot cannot schedule: the swap stalls midway
    try:
        patch(cluster, ns, "rs", {"model": B})
        obj = wait_for(
            "Degraded during the swap",
            lambda: (
                (o := get(cluster, "clip", "rs", ns))
                and condition(o, "Degraded").get("status") == "True"
                and o
            ),
        )
        # The old slot keeps serving, and the status says why the new one does not start.
        assert condition(obj, "Ready")["status"] == "True"
        assert obj["status"]["activeModel"] == A and obj["status"]["pendingModel"] == B
        assert "slot green" in condition(obj, "Degraded")["message"]
        assert "unschedulable" in condition(obj, "Degraded")["message"]
        patch(cluster, ns, "rs", {"model": C})  # a second change while the first is pending
        wait_for(
            "the pending slot to take C",
            lambda: (
                (d := get(cluster, "deployment", "rs-green", ns))
                and d["metadata"]["annotations"]["clipserve.io/model"] == C
            ),
        )
        running_operator.stop()
    finally:
        cluster.kubectl("uncordon", *cpu_nodes)
    # While the operator is down the new slot becomes ready, but nothing moves the Service.
    wait_for(
        "green ready without the operator",
        lambda: (
            (d := get(cluster, "deployment", "rs-green", ns))
            and (d.get("status") or {}).get("readyReplicas") == 1
        ),
    )
    assert service_slot(cluster, ns, "rs") == "blue"
    running_operator.start()
    obj = wait_for("the swap to finish after the restart", lambda: fully_ready(cluster, ns, "rs"))
    assert (obj["status"]["activeModel"], obj["status"]["activeSlot"]) == (C, "green")
    # Status records the promotion first (so a crash cannot roll it back), then the Service moves.
    wait_for("the Service to move", lambda: service_slot(cluster, ns, "rs") == "green")
    wait_for("the old slot to be pruned", lambda: get(cluster, "deployment", "rs-blue", ns) is None)


def test_drift_is_corrected(cluster: Cluster, running_operator: OperatorRun, ns: str) -> None:
    clip(cluster, ns, "drift", {"model": A, "replicas": 2, "nodePool": {"nodeSelector": CPU_POOL}})
    wait_for("Ready", lambda: fully_ready(cluster, ns, "drift"))
    cluster.kubectl("scale", "deployment/drift-blue", "-n", ns, "--replicas=5")
    wait_for(
        "replicas restored",
        lambda: get(cluster, "deployment", "drift-blue", ns)["spec"]["replicas"] == 2,
    )
    cluster.kubectl(
        "patch",
        "service",
        "drift",
        "-n",
        ns,
        "--type",
        "merge",
        "-p",
        '{"spec":{"selector":{"clipserve.io/slot":"green"}}}',
    )
    wait_for(
        "selector restored",
        lambda: (
            get(cluster, "service", "drift", ns)["spec"]["selector"]["clipserve.io/slot"] == "blue"
        ),
    )


def test_reconcile_is_idempotent(cluster: Cluster, running_operator: OperatorRun, ns: str) -> None:
    clip(cluster, ns, "idem", {"model": A, "replicas": 2, "nodePool": {"nodeSelector": CPU_POOL}})
    wait_for(
        "Ready",
        lambda: (o := fully_ready(cluster, ns, "idem")) and o["status"]["readyReplicas"] == 2,
    )
    selector = f"{OWNER_LABEL}={'idem'}"

    def versions() -> dict[str, str]:
        out = json.loads(
            cluster.kubectl(
                "get", "deployments,services,poddisruptionbudgets,clip", "-n", ns, "-o", "json"
            )
        )["items"]
        return {
            f"{o['kind']}/{o['metadata']['name']}": o["metadata"]["resourceVersion"]
            for o in out
            if o["kind"] != "ClipService" or o["metadata"]["name"] == "idem"
        }

    assert items(cluster, "deployments", ns, selector)
    before = versions()
    done = running_operator.metric("clipserve_operator_reconciles_total", 'result="ok"')
    # A ClipService event triggers a full reconcile: render, apply every object, prune, status.
    cluster.kubectl("annotate", "clip", "idem", "-n", ns, "example.com/poke=1")
    wait_for(
        "a reconcile",
        lambda: (
            running_operator.metric("clipserve_operator_reconciles_total", 'result="ok"') > done
        ),
    )
    after = versions()
    before.pop("ClipService/idem"), after.pop("ClipService/idem")  # the annotation itself
    assert after == before


def test_deleting_a_clipservice_removes_every_child_even_with_the_operator_down(
    cluster: Cluster, running_operator: OperatorRun, ns: str
) -> None:
    clip(
        cluster,
        ns,
        "gone",
        {
            "model": A,
            "nodePool": {"nodeSelector": CPU_POOL},
            "autoscaling": {"minReplicas": 2, "maxReplicas": 3},
        },
    )
    wait_for("Ready", lambda: fully_ready(cluster, ns, "gone"))
    selector = f"{OWNER_LABEL}=gone"
    kinds = "deployments,replicasets,pods,services,horizontalpodautoscalers,poddisruptionbudgets"
    children = {o["kind"] for o in items(cluster, kinds, ns, selector)}
    assert children == {
        "Deployment",
        "ReplicaSet",
        "Pod",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
    }
    assert not get(cluster, "clip", "gone", ns)["metadata"].get("finalizers")
    running_operator.stop()
    cluster.kubectl("delete", "clip", "gone", "-n", ns, "--timeout=60s")
    wait_for("the garbage collector", lambda: items(cluster, kinds, ns, selector) == [])


def _operator_process(operator: OperatorRun, log: Path) -> subprocess.Popen[bytes]:
    """The `clipserve-operator` console script as a real process, same identity and settings."""
    env = {
        **os.environ,
        **operator.env,
        "CLIPSERVE_OPERATOR_LIVENESS": f"http://127.0.0.1:{operator.liveness_port}/healthz",
    }
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "clipserve-operator")],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    wait_for(
        "the operator process to be live",
        lambda: operator.get("liveness", "/healthz")[0] == 200 or proc.poll() is not None,
    )
    assert proc.poll() is None, log.read_text()[-3000:]
    return proc


def test_operator_process_killed_mid_swap_resumes_after_restart(
    cluster: Cluster, operator: OperatorRun, ns: str, tmp_path: Path
) -> None:
    operator.stop()  # one operator at a time: this test runs the real entry point instead
    log = tmp_path / "operator.log"
    proc = _operator_process(operator, log)
    cpu_nodes = ("cpu-0", "cpu-1")
    try:
        clip(
            cluster, ns, "kill", {"model": A, "replicas": 2, "nodePool": {"nodeSelector": CPU_POOL}}
        )
        wait_for("Ready", lambda: fully_ready(cluster, ns, "kill"))
        cluster.kubectl("cordon", *cpu_nodes)
        try:
            patch(cluster, ns, "kill", {"model": B})
            wait_for(
                "the swap to start",
                lambda: (
                    (o := get(cluster, "clip", "kill", ns))
                    and o["status"].get("pendingModel") == B
                    and get(cluster, "deployment", "kill-green", ns)
                ),
            )
            proc.kill()  # SIGKILL: no cleanup handlers, in-flight API calls cut off
            proc.wait(timeout=30)
        finally:
            cluster.kubectl("uncordon", *cpu_nodes)
        proc = _operator_process(operator, log)
        obj = wait_for("the swap to finish", lambda: fully_ready(cluster, ns, "kill"))
        assert (obj["status"]["activeModel"], obj["status"]["activeSlot"]) == (B, "green")
        wait_for("the Service to move", lambda: service_slot(cluster, ns, "kill") == "green")
        wait_for(
            "the old slot to be pruned", lambda: get(cluster, "deployment", "kill-blue", ns) is None
        )
    finally:
        proc.terminate()
        assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]  # SIGTERM stops it cleanly


def _report_device(cluster: Cluster, ns: str, pod: str, device: str) -> None:
    """Do what the kubelet does when the `device` init container exits: keep its termination
    message in the pod status (kwok runs no container, so it records an empty one)."""
    path = "/status/initContainerStatuses/0/state/terminated/message"
    cluster.kubectl(
        "patch", "pod", pod, "-n", ns, "--subresource=status", "--type=json",
        "-p", json.dumps([{"op": "add", "path": path, "value": device}]),
    )  # fmt: skip


def test_device_column_shows_what_the_serving_pods_reported(
    cluster: Cluster, running_operator: OperatorRun, ns: str
) -> None:
    gpu_pool = {"nodeSelector": {"clipserve.io/node-pool": "gpu"}}
    clip(cluster, ns, "dev", {"model": A, "replicas": 2, "gpu": {"count": 1}, "nodePool": gpu_pool})
    obj = wait_for(
        "Ready",
        lambda: (o := fully_ready(cluster, ns, "dev")) and o["status"]["readyReplicas"] == 2 and o,
    )
    assert obj["status"]["device"] == ""  # no pod has reported yet
    pods = items(cluster, "pods", ns, f"{OWNER_LABEL}=dev")
    for pod in pods:
        init = pod["spec"]["initContainers"][0]
        assert init["name"] == "device" and init["command"][:2] == ["clipserve", "device"]
        # The same GPU as the server, so that it reports what the server gets.
        assert init["resources"] == pod["spec"]["containers"][0]["resources"]
        assert init["resources"]["limits"]["nvidia.com/gpu"] == "1"
        _report_device(cluster, ns, pod["metadata"]["name"], "cuda")
    wait_for("device cuda", lambda: get(cluster, "clip", "dev", ns)["status"]["device"] == "cuda")
    row = cluster.kubectl("get", "clip", "dev", "-n", ns, "--no-headers").split()
    assert row[:5] == ["dev", A, "True", "2/2", "cuda"]
    _report_device(cluster, ns, pods[0]["metadata"]["name"], "cpu")
    wait_for(
        "both devices", lambda: get(cluster, "clip", "dev", ns)["status"]["device"] == "cpu,cuda"
    )


def test_liveness_and_metrics_endpoints(
    cluster: Cluster, running_operator: OperatorRun, ns: str
) -> None:
    before = running_operator.metric("clipserve_operator_reconciles_total", 'result="ok"')
    clip(cluster, ns, "probe", {"model": A, "replicas": 1, "nodePool": {"nodeSelector": CPU_POOL}})
    wait_for("Ready", lambda: fully_ready(cluster, ns, "probe"))
    assert running_operator.get("liveness", "/healthz")[0] == 200
    status, text = running_operator.get("metrics", "/metrics")
    assert status == 200
    assert running_operator.metric("clipserve_operator_reconciles_total", 'result="ok"') > before
    assert "clipserve_operator_reconcile_duration_seconds_count" in text


def test_the_chart_rbac_was_enough(running_operator: OperatorRun) -> None:
    """Runs last: no API call of the whole module was refused to the operator's identity."""
    refused = [
        m
        for m in running_operator.log.messages
        if ("403" in m or "forbidden" in m.lower())
        and "is being terminated" not in m  # test cleanup
    ]
    assert refused == []
