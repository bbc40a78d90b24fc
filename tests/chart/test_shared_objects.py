"""Service-side objects: ServiceMonitor, NetworkPolicy, Ingress, dashboard ConfigMap, NOTES."""

from __future__ import annotations

import json

import pytest

from tests.support.rendering import CHART, NAMESPACE, Helm, only

pytestmark = pytest.mark.helm

DASHBOARD = CHART / "dashboards" / "clipserve.json"


def test_should_scrape_metrics_on_the_http_port_if_service_monitor_is_enabled(helm: Helm) -> None:
    objs = helm.template(values_files=[CHART / "ci" / "servicemonitor-values.yaml"])
    sm = only(objs, "ServiceMonitor")
    assert sm["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    (endpoint,) = sm["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == ("http", "/metrics")
    assert (endpoint["interval"], endpoint["scrapeTimeout"]) == ("15s", "5s")
    assert endpoint["metricRelabelings"][0]["action"] == "drop"
    # It must select the Service (by its labels) in the release namespace.
    service = only(objs, "Service")
    selector = sm["spec"]["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items()
    assert sm["spec"]["namespaceSelector"] == {"matchNames": [NAMESPACE]}
    assert any(p["name"] == endpoint["port"] for p in service["spec"]["ports"])


def test_should_render_no_service_monitor_if_the_service_is_disabled(helm: Helm) -> None:
    objs = helm.template({"serviceMonitor": {"enabled": True}, "service": {"enabled": False}})
    assert "ServiceMonitor" not in {o["kind"] for o in objs}


def test_should_admit_only_the_http_port_from_listed_peers_if_network_policy_is_enabled(
    helm: Helm,
) -> None:
    objs = helm.template(values_files=[CHART / "ci" / "network-ingress-values.yaml"])
    spec = only(objs, "NetworkPolicy")["spec"]
    assert spec["policyTypes"] == ["Ingress", "Egress"]
    (rule,) = spec["ingress"]
    assert rule["ports"] == [{"port": "http", "protocol": "TCP"}]
    assert rule["from"][0]["namespaceSelector"]["matchLabels"] == {
        "kubernetes.io/metadata.name": "ingress-nginx"
    }
    # DNS first, then the user's egress rules.
    assert {"port": 53, "protocol": "UDP"} in spec["egress"][0]["ports"]
    assert spec["egress"][1]["ports"] == [{"port": 443, "protocol": "TCP"}]


def test_should_leave_egress_open_if_no_egress_rules_are_given(helm: Helm) -> None:
    spec = only(helm.template({"networkPolicy": {"enabled": True}}), "NetworkPolicy")["spec"]
    assert spec["policyTypes"] == ["Ingress"]
    assert "from" not in spec["ingress"][0]
    assert "egress" not in spec


def test_should_route_hosts_to_the_service_port_if_ingress_is_enabled(helm: Helm) -> None:
    objs = helm.template(values_files=[CHART / "ci" / "network-ingress-values.yaml"])
    spec = only(objs, "Ingress")["spec"]
    assert spec["ingressClassName"] == "nginx"
    assert spec["tls"] == [{"secretName": "clip-tls", "hosts": ["clip.example.com"]}]
    (rule,) = spec["rules"]
    assert rule["host"] == "clip.example.com"
    assert rule["http"]["paths"][0]["backend"] == {
        "service": {"name": only(objs, "Service")["metadata"]["name"], "port": {"name": "http"}}
    }


def test_should_ship_the_dashboard_with_the_sidecar_label_if_dashboards_are_enabled(
    helm: Helm,
) -> None:
    objs = helm.template(values_files=[CHART / "ci" / "servicemonitor-values.yaml"])
    cm = only(objs, "ConfigMap")
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["metadata"]["annotations"] == {"grafana_folder": "ML"}
    assert json.loads(cm["data"]["clipserve.json"]) == json.loads(DASHBOARD.read_text())


def test_should_create_a_tokenless_service_account_if_asked(helm: Helm) -> None:
    objs = helm.template(values_files=[CHART / "ci" / "network-ingress-values.yaml"])
    sa = only(objs, "ServiceAccount")
    assert sa["automountServiceAccountToken"] is False
    pod = only(objs, "Deployment")["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == sa["metadata"]["name"]


def test_should_tell_the_user_how_to_call_the_service_if_installed(helm: Helm) -> None:
    notes = helm.notes({"model": "ViT-L-14:openai", "gpu": {"count": 1}})
    assert '"ViT-L-14:openai"' in notes
    assert "1 nvidia.com/gpu" in notes
    assert "http://clip-clipserve.ml.svc.cluster.local:3000" in notes
    assert "port-forward svc/clip-clipserve 3000:3000" in notes
    assert '"$CLIPSERVE_URL/encode"' in notes
    assert '"$CLIPSERVE_URL/rank"' in notes
    assert "rollout status deployment/clip-clipserve" in notes


def test_should_point_notes_at_the_ingress_and_auth_if_they_are_enabled(helm: Helm) -> None:
    notes = helm.notes(
        {
            "slot": "blue",
            "apiKey": {"secretName": "keys"},
            "ingress": {
                "enabled": True,
                "tls": [{"hosts": ["c.example.com"]}],
                "hosts": [
                    {"host": "c.example.com", "paths": [{"path": "/", "pathType": "Prefix"}]}
                ],
            },
        }
    )
    assert "export CLIPSERVE_URL=https://c.example.com" in notes
    assert "Authorization: Bearer" in notes
    assert "deployment/clip-clipserve-blue" in notes
