"""HorizontalPodAutoscaler, KEDA ScaledObject and PodDisruptionBudget."""

from __future__ import annotations

import pytest
import yaml

from tests.support.rendering import CHART, NAMESPACE, ROOT, Helm, HelmError, kinds, only

pytestmark = pytest.mark.helm


def test_should_scale_on_cpu_memory_and_queue_depth_if_hpa_scenario_is_used(helm: Helm) -> None:
    objs = helm.template(values_files=[CHART / "ci" / "autoscaling-hpa-values.yaml"])
    hpa = only(objs, "HorizontalPodAutoscaler")
    spec = hpa["spec"]
    assert spec["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": only(objs, "Deployment")["metadata"]["name"],
    }
    assert (spec["minReplicas"], spec["maxReplicas"]) == (2, 8)
    by_type = {
        m.get("resource", {}).get("name") or m["pods"]["metric"]["name"]: m for m in spec["metrics"]
    }
    assert by_type["cpu"]["resource"]["target"] == {"type": "Utilization", "averageUtilization": 70}
    assert by_type["memory"]["resource"]["target"]["averageUtilization"] == 85
    assert by_type["clipserve_queue_depth"]["pods"]["target"] == {
        "type": "AverageValue",
        "averageValue": "32",
    }
    assert spec["behavior"]["scaleDown"]["stabilizationWindowSeconds"] == 300


def test_should_scale_on_cpu_only_if_hpa_defaults_are_used(helm: Helm) -> None:
    hpa = only(helm.template({"autoscaling": {"enabled": True}}), "HorizontalPodAutoscaler")
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]


def test_should_render_a_scaled_object_on_queue_depth_if_keda_is_enabled(helm: Helm) -> None:
    objs = helm.template(values_files=[CHART / "ci" / "keda-values.yaml"])
    assert "HorizontalPodAutoscaler" not in kinds(objs)  # KEDA owns its own HPA
    so = only(objs, "ScaledObject")["spec"]
    assert so["scaleTargetRef"]["name"] == "clip-clipserve"
    assert (so["minReplicaCount"], so["maxReplicaCount"]) == (0, 6)
    trigger, wake = so["triggers"]  # minReplicas 0: the gate's wake-up trigger comes second
    assert wake["metadata"]["query"] == (
        f'sum(rate(clipserve_gate_requests_total{{namespace="{NAMESPACE}",'
        'job="clip-clipserve-gate",outcome=~"proxied|unavailable|error|cancelled"}[1m]))'
    )
    assert trigger["type"] == "prometheus"
    assert trigger["metricType"] == "AverageValue"
    assert (
        trigger["metadata"]["query"]
        == f'sum(clipserve_queue_depth{{namespace="{NAMESPACE}",job="clip-clipserve"}})'
    )
    assert trigger["metadata"]["threshold"] == "64"
    assert trigger["authenticationRef"] == {"name": "prometheus-auth"}


def test_should_select_the_slots_series_if_keda_scales_a_slot(helm: Helm) -> None:
    objs = helm.template({"slot": "green", "keda": {"enabled": True}})
    query = only(objs, "ScaledObject")["spec"]["triggers"][0]["metadata"]["query"]
    assert 'clipserve_io_slot="green"' in query
    # The ServiceMonitor is what turns the pod label into that series label.
    objs = helm.template({"serviceMonitor": {"enabled": True}})
    monitor = only(objs, "ServiceMonitor")["spec"]
    assert monitor["podTargetLabels"] == ["clipserve.io/slot"]
    # ... and keeps the server's `endpoint` label (its route), which the dashboard groups by,
    # instead of the Prometheus Operator's (the port name).
    assert monitor["endpoints"][0]["honorLabels"] is True


def test_should_use_the_given_query_if_keda_query_is_set(helm: Helm) -> None:
    objs = helm.template({"keda": {"enabled": True, "prometheus": {"query": "vector(3)"}}})
    assert only(objs, "ScaledObject")["spec"]["triggers"][0]["metadata"]["query"] == "vector(3)"


def test_should_fail_if_both_hpa_and_keda_are_enabled(helm: Helm) -> None:
    with pytest.raises(HelmError, match="either autoscaling or keda"):
        helm.template({"autoscaling": {"enabled": True}, "keda": {"enabled": True}})


def test_should_fail_if_min_replicas_exceed_max_replicas(helm: Helm) -> None:
    with pytest.raises(HelmError, match=r"autoscaling.minReplicas \(5\) exceeds"):
        helm.template({"autoscaling": {"enabled": True, "minReplicas": 5, "maxReplicas": 2}})


@pytest.mark.parametrize(
    ("values", "rendered"),
    [
        ({}, False),
        ({"replicaCount": 2}, True),
        ({"replicaCount": 3, "podDisruptionBudget": {"enabled": False}}, False),
        ({"autoscaling": {"enabled": True, "minReplicas": 1}, "replicaCount": 5}, False),
        ({"autoscaling": {"enabled": True, "minReplicas": 2}}, True),
        ({"keda": {"enabled": True, "minReplicas": 0}}, False),
    ],
    ids=["one-replica", "two-replicas", "disabled", "hpa-min-1", "hpa-min-2", "keda-min-0"],
)
def test_should_render_a_pdb_only_if_more_than_one_replica_is_guaranteed(
    helm: Helm, values: dict, rendered: bool
) -> None:
    assert ("PodDisruptionBudget" in kinds(helm.template(values))) is rendered


def test_should_allow_one_eviction_if_pdb_scenario_is_used(helm: Helm) -> None:
    objs = helm.template(values_files=[CHART / "ci" / "pdb-values.yaml"])
    pdb = only(objs, "PodDisruptionBudget")["spec"]
    assert pdb == {
        "selector": {"matchLabels": only(objs, "Deployment")["spec"]["selector"]["matchLabels"]},
        "maxUnavailable": 1,
    }


def test_should_keep_min_available_if_max_unavailable_is_unset(helm: Helm) -> None:
    pdb = only(
        helm.template({"replicaCount": 4, "podDisruptionBudget": {"minAvailable": "50%"}}),
        "PodDisruptionBudget",
    )["spec"]
    assert pdb["minAvailable"] == "50%"
    assert "maxUnavailable" not in pdb


def test_should_put_a_gate_in_front_if_keda_may_scale_to_zero(helm: Helm) -> None:
    objs = helm.template({"keda": {"enabled": True, "minReplicas": 0, "gate": {"replicas": 2}}})
    deployments = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Deployment"}
    services = {o["metadata"]["name"]: o for o in objs if o["kind"] == "Service"}
    assert set(deployments) == {"clip-clipserve", "clip-clipserve-gate"}
    assert set(services) == {"clip-clipserve", "clip-clipserve-gate"}
    gate, server = deployments["clip-clipserve-gate"], deployments["clip-clipserve"]
    gate_pods = gate["spec"]["template"]["metadata"]["labels"]
    server_pods = server["spec"]["template"]["metadata"]["labels"]
    # Each Service selects its own pods only: a gate never receives the gate's own traffic.
    assert services["clip-clipserve-gate"]["spec"]["selector"].items() <= gate_pods.items()
    assert not services["clip-clipserve"]["spec"]["selector"].items() <= gate_pods.items()
    assert not services["clip-clipserve-gate"]["spec"]["selector"].items() <= server_pods.items()
    # It passes requests to the servers' Service; clients call the gate's.
    spec = gate["spec"]
    (container,) = spec["template"]["spec"]["containers"]
    assert container["command"][:2] == ["clipserve", "gate"]
    assert "--backend=http://clip-clipserve:3000" in container["command"]
    assert "--retry-after-s=15" in container["command"]
    assert container["image"] == server["spec"]["template"]["spec"]["containers"][0]["image"]
    assert spec["replicas"] == 2 and "replicas" not in server["spec"]
    marked = [n for n, s in services.items() if s["metadata"].get("annotations")]
    assert marked == ["clip-clipserve-gate"]
    wake = only(objs, "ScaledObject")["spec"]["triggers"][1]["metadata"]
    assert (wake["activationThreshold"], wake["threshold"]) == ("0", "1000000")


def test_should_render_no_gate_if_keda_keeps_a_pod(helm: Helm) -> None:
    objs = helm.template({"keda": {"enabled": True, "minReplicas": 1}})
    assert [o["metadata"]["name"] for o in objs if o["kind"] == "Deployment"] == ["clip-clipserve"]
    assert len(only(objs, "ScaledObject")["spec"]["triggers"]) == 1


def test_should_scrape_as_the_service_monitor_does_if_prometheus_runs_without_its_operator(
    helm: Helm,
) -> None:
    # manifests/metrics/prometheus-scrape.yaml is the ServiceMonitor's job for a Prometheus
    # without the Prometheus Operator: same Services, port, path, labels.
    monitor = only(helm.template({"serviceMonitor": {"enabled": True}}), "ServiceMonitor")["spec"]
    (endpoint,) = monitor["endpoints"]
    (job,) = yaml.safe_load((ROOT / "manifests/metrics/prometheus-scrape.yaml").read_text())[
        "scrape_configs"
    ]
    assert job["metrics_path"] == endpoint["path"]
    assert job["honor_labels"] is endpoint["honorLabels"] is True
    assert job["kubernetes_sd_configs"] == [{"role": "endpointslice"}]
    rules = {tuple(r.get("source_labels", ())): r for r in job["relabel_configs"]}
    keep = rules[
        (
            "__meta_kubernetes_service_label_app_kubernetes_io_name",
            "__meta_kubernetes_endpointslice_port_name",
        )
    ]
    name = monitor["selector"]["matchLabels"]["app.kubernetes.io/name"]
    assert (keep["action"], keep["regex"]) == ("keep", f"{name};{endpoint['port']}")
    targets = {
        r["target_label"]: r.get("source_labels")
        for r in job["relabel_configs"]
        if "target_label" in r
    }
    # No jobLabel: the job is the Service's name, which the KEDA queries select on.
    assert "jobLabel" not in monitor and targets["job"] == ["__meta_kubernetes_service_name"]
    for label in monitor["podTargetLabels"]:
        sanitized = label.replace(".", "_").replace("/", "_")
        assert targets[sanitized] == [f"__meta_kubernetes_pod_label_{sanitized}"]
    assert {"namespace", "pod", "service", "container", "endpoint"} <= set(targets)
