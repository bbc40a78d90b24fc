"""What spec.values may set: the allow-list, checked against the chart and the README."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from clipserve_operator.errors import ValuesNotAllowed
from clipserve_operator.values_policy import SAFE_VALUES, check_values, refused_values

REPO = Path(__file__).resolve().parents[2]
CHART_VALUES = yaml.safe_load((REPO / "charts/clipserve/values.yaml").read_text())
EXAMPLES = sorted((REPO / "manifests/examples").glob("*.yaml"))
HOST_PATH = [{"name": "host", "hostPath": {"path": "/"}}]
PROM = "keda.prometheus"


@pytest.mark.parametrize(
    ("values", "path"),
    [
        ({"extraVolumes": HOST_PATH}, "extraVolumes"),
        ({"extraVolumeMounts": [{"name": "host", "mountPath": "/host"}]}, "extraVolumeMounts"),
        ({"extraEnv": [{"name": "X", "valueFrom": {"secretKeyRef": {"name": "db"}}}]}, "extraEnv"),
        ({"serviceAccount": {"name": "admin"}}, "serviceAccount"),
        ({"serviceAccount": {"create": True}}, "serviceAccount"),
        ({"image": {"repository": "evil.example/x"}}, "image.repository"),
        ({"imagePullSecrets": [{"name": "regcred"}]}, "imagePullSecrets"),
        ({"podLabels": {"app": "web"}}, "podLabels"),
        ({"podAnnotations": {"iam.amazonaws.com/role": "admin"}}, "podAnnotations"),
        ({"nameOverride": "web"}, "nameOverride"),
        ({"fullnameOverride": "web"}, "fullnameOverride"),
        ({"service": {"type": "LoadBalancer"}}, "service.type"),
        ({"ingress": {"enabled": True}}, "ingress"),
        ({"keda": {"prometheus": {"serverAddress": "http://x.example"}}}, f"{PROM}.serverAddress"),
        ({"keda": {"prometheus": {"authenticationRef": "creds"}}}, f"{PROM}.authenticationRef"),
        ({"keda": {"prometheus": {"query": "sum(secret_metric)"}}}, f"{PROM}.query"),
        ({"hfToken": {"secretName": "db"}}, "hfToken"),
        ({"apiKey": {"secretName": ""}}, "apiKey"),
        ({"modelCache": {"type": "existingClaim", "existingClaim": "db-data"}}, "modelCache"),
        ({"fetchAllow": ["169.254.169.254/32"]}, "fetchAllow"),
        ({"tracing": {"headersSecret": "db"}}, "tracing.headersSecret"),
        ({"deployment": {"enabled": False}}, "deployment.enabled"),
        ({"keda": None}, "keda"),  # would replace the map whole
    ],
)  # fmt: skip
def test_values_granting_power_identity_or_credentials_are_refused_by_path(
    values: dict[str, Any], path: str
) -> None:
    assert refused_values(values) == [path]
    with pytest.raises(ValuesNotAllowed, match=rf"spec\.values\.{path}") as err:
        check_values({"model": "ViT-B-32:random", "values": values})
    assert err.value.reason == "ValuesNotAllowed"


def test_sizing_tuning_and_autoscaler_thresholds_pass() -> None:
    values = {
        "replicaCount": 2,
        "resources": {"limits": {"memory": "8Gi"}},
        "batching": {"maxBatchSize": 64},
        "embeddingCache": {"sizeMB": 0},
        "drain": {"graceSeconds": 9},
        "probes": {"startup": {"failureThreshold": 360}},
        "image": {"tag": "1.2.3", "pullPolicy": "Always"},
        "service": {"port": 8080},
        "autoscaling": {"behavior": {"scaleDown": {"stabilizationWindowSeconds": 300}}},
        "keda": {
            "enabled": True,
            "minReplicas": 0,
            "prometheus": {"threshold": 8, "activationThreshold": 1},
            "gate": {"retryAfterSeconds": 5},
        },
        "networkPolicy": {"enabled": True, "from": [{"podSelector": {}}]},
        "tracing": {"endpoint": "http://otel-collector.obs:4318", "sampler": "always_on"},
    }
    assert refused_values(values) == []
    check_values({"values": values})
    check_values({"model": "ViT-B-32:random"})  # no values at all


def test_every_refused_path_is_named_at_once() -> None:
    values = {"extraVolumes": HOST_PATH, "serviceAccount": {"name": "x"}, "replicaCount": 1}
    with pytest.raises(ValuesNotAllowed) as err:
        check_values({"values": values})
    assert str(err.value).startswith("spec.values.extraVolumes, spec.values.serviceAccount: ")
    assert "--values-allow" in str(err.value)


def test_an_admin_can_allow_more_paths() -> None:
    values = {"keda": {"prometheus": {"serverAddress": "http://prom.obs:9090"}}}
    assert refused_values(values, ["keda.prometheus.serverAddress"]) == []
    check_values({"values": {"fetchAllow": ["10.0.0.0/8"]}}, ["fetchAllow"])
    # a path allows what is below it, not its siblings
    assert refused_values({"keda": {"prometheus": {"query": "up"}}}, ["keda.prometheus.x"]) == [
        "keda.prometheus.query"
    ]


def _lookup(values: dict[str, Any], dotted: str) -> bool:
    node: Any = values
    for key in dotted.split("."):
        if not isinstance(node, dict) or key not in node:
            return False
        node = node[key]
    return True


@pytest.mark.parametrize("path", SAFE_VALUES)
def test_every_allowed_path_is_a_chart_value(path: str) -> None:
    # A renamed chart value must not leave a stale entry (or a silently allowed new one).
    assert _lookup(CHART_VALUES, path), path


@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_passes_the_allow_list(example: Path) -> None:
    check_values(yaml.safe_load(example.read_text())["spec"])


def test_the_readme_security_section_lists_every_allowed_path() -> None:
    readme = (REPO / "README.md").read_text()
    section = readme.split("### Security")[1].split("\n## ")[0]
    for path in SAFE_VALUES:
        assert f"`{path}`" in section, path
