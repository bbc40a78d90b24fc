"""What autoscaling reads, generated from the server's own metric names (clipserve.metrics).

charts/clipserve/metrics.json (the series the chart's HPA and KEDA templates name) and
manifests/metrics/prometheus-adapter.yaml (prometheus-adapter serving the queue depth to the
HPA as a custom Pods metric). `make generate` writes them; tests/chart/test_metric_names.py
finds each series on a real server.
"""

from __future__ import annotations

import json
from typing import Any

import yaml
from clipserve import metrics

from .artefact import Artefact

ADAPTER_VERSION = "v0.12.0"  # scripts/k8s/versions.env PROMETHEUS_ADAPTER_VERSION
NAMESPACE = "monitoring"
# Where the Prometheus Operator's Service for a Prometheus in `monitoring` answers (the chart's
# keda.prometheus.serverAddress default names the same one).
PROMETHEUS_URL = "http://prometheus-operated.monitoring.svc:9090/"
LABELS = {"app.kubernetes.io/name": "prometheus-adapter"}


def chart_names() -> dict[str, str]:
    """The names file the chart reads with .Files.Get."""
    return {"queueDepth": metrics.QUEUE_DEPTH, "gateRequests": metrics.GATE_REQUESTS}


def adapter_rules() -> dict[str, Any]:
    """prometheus-adapter's config: each pod's queued items (every model and modality summed)."""
    name = metrics.QUEUE_DEPTH
    return {
        "rules": [
            {
                "seriesQuery": f'{name}{{namespace!="",pod!=""}}',
                "resources": {
                    "overrides": {
                        "namespace": {"resource": "namespace"},
                        "pod": {"resource": "pod"},
                    }
                },
                "name": {"matches": f"^{name}$", "as": name},
                "metricsQuery": "sum(<<.Series>>{<<.LabelMatchers>>}) by (<<.GroupBy>>)",
            }
        ]
    }


def _meta(name: str, namespace: str | None = NAMESPACE) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    if namespace:
        meta["namespace"] = namespace
    return {**meta, "labels": dict(LABELS)}


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (the adapter's config) as literal blocks, as a person writes them."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def _binding(kind: str, name: str, role_kind: str, role: str, namespace: str | None = None) -> Any:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": _meta(name, namespace),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": role_kind, "name": role},
        "subjects": [
            {"kind": "ServiceAccount", "name": "prometheus-adapter", "namespace": NAMESPACE}
        ],
    }


def _deployment() -> dict[str, Any]:
    container = {
        "name": "prometheus-adapter",
        "image": f"registry.k8s.io/prometheus-adapter/prometheus-adapter:{ADAPTER_VERSION}",
        "args": [
            "--cert-dir=/var/run/serving-cert",
            "--config=/etc/adapter/config.yaml",
            f"--prometheus-url={PROMETHEUS_URL}",
            # How often it lists the series in Prometheus (new metric names, new pods).
            "--metrics-relist-interval=30s",
            "--secure-port=6443",
        ],
        "ports": [{"containerPort": 6443, "name": "https"}],
        "readinessProbe": {
            "httpGet": {"path": "/readyz", "port": "https", "scheme": "HTTPS"},
            "periodSeconds": 5,
        },
        "livenessProbe": {
            "httpGet": {"path": "/livez", "port": "https", "scheme": "HTTPS"},
            "periodSeconds": 10,
            "failureThreshold": 5,
        },
        "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]},
            "readOnlyRootFilesystem": True,
            "runAsNonRoot": True,
            "runAsUser": 65534,
        },
        "volumeMounts": [
            {"name": "serving-cert", "mountPath": "/var/run/serving-cert"},
            {"name": "config", "mountPath": "/etc/adapter", "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _meta("prometheus-adapter"),
        "spec": {
            "replicas": 1,
            "selector": {"matchLabels": dict(LABELS)},
            "template": {
                "metadata": {"labels": dict(LABELS)},
                "spec": {
                    "serviceAccountName": "prometheus-adapter",
                    "containers": [container],
                    "volumes": [
                        {"name": "serving-cert", "emptyDir": {}},
                        {"name": "config", "configMap": {"name": "prometheus-adapter"}},
                        {"name": "tmp", "emptyDir": {}},
                    ],
                },
            },
        },
    }


def _api_service(version: str) -> dict[str, Any]:
    return {
        "apiVersion": "apiregistration.k8s.io/v1",
        "kind": "APIService",
        "metadata": _meta(f"{version}.custom.metrics.k8s.io", None),
        "spec": {
            "group": "custom.metrics.k8s.io",
            "version": version,
            "service": {"name": "prometheus-adapter", "namespace": NAMESPACE, "port": 443},
            # The adapter serves a self-signed certificate (as upstream's manifests); with
            # cert-manager, set caBundle instead.
            "insecureSkipTLSVerify": True,
            "groupPriorityMinimum": 100,
            "versionPriority": 200 if version == "v1beta2" else 100,
        },
    }


def adapter_manifest() -> list[dict[str, Any]]:
    """Everything prometheus-adapter needs to serve custom.metrics.k8s.io, in `monitoring`."""
    reader = {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRole",
        "metadata": _meta("prometheus-adapter-resource-reader", None),
        "rules": [
            {
                "apiGroups": [""],
                "resources": ["namespaces", "pods", "services", "nodes"],
                "verbs": ["get", "list", "watch"],
            }
        ],
    }
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        {"apiVersion": "v1", "kind": "ServiceAccount", "metadata": _meta("prometheus-adapter")},
        reader,
        _binding(
            "ClusterRoleBinding",
            "prometheus-adapter-resource-reader",
            "ClusterRole",
            "prometheus-adapter-resource-reader",
        ),
        # Delegated authentication and authorization of the API server's requests.
        _binding(
            "ClusterRoleBinding",
            "prometheus-adapter:system:auth-delegator",
            "ClusterRole",
            "system:auth-delegator",
        ),
        _binding(
            "RoleBinding",
            "prometheus-adapter-auth-reader",
            "Role",
            "extension-apiserver-authentication-reader",
            "kube-system",
        ),
        {
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": _meta("prometheus-adapter"),
            "data": {"config.yaml": yaml.safe_dump(adapter_rules(), sort_keys=False)},
        },
        _deployment(),
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": _meta("prometheus-adapter"),
            "spec": {
                "selector": dict(LABELS),
                "ports": [{"name": "https", "port": 443, "targetPort": "https"}],
            },
        },
        _api_service("v1beta2"),
        _api_service("v1beta1"),
    ]


def adapter_yaml() -> str:
    """manifests/metrics/prometheus-adapter.yaml."""
    header = (
        "# Generated from the server's metric names by `make generate`; do not edit.\n"
        "# prometheus-adapter serving clipserve's queued items per pod (custom.metrics.k8s.io)\n"
        "# to the chart's HorizontalPodAutoscaler (autoscaling.queueDepthPerPod), read from the\n"
        f"# Prometheus at {PROMETHEUS_URL} that scrapes the pods (README: Autoscaling).\n"
    )
    return header + "---\n" + yaml.dump_all(adapter_manifest(), Dumper=_Dumper, sort_keys=False)


SOURCE = "the metric names in service/clipserve/metrics.py"
ARTEFACTS = [
    Artefact(
        "charts/clipserve/metrics.json",
        SOURCE,
        lambda: json.dumps(chart_names(), indent=2) + "\n",
    ),
    Artefact("manifests/metrics/prometheus-adapter.yaml", SOURCE, adapter_yaml),
]
