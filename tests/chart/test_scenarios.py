"""Every ci/ scenario: helm lint, offline schema validation, labels, namespace, determinism."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest

from tests.support.rendering import CI_VALUES, NAMESPACE, RELEASE, Helm, validate_custom_resources

pytestmark = pytest.mark.helm

# Newest Kubernetes whose OpenAPI schemas kubernetes-validate ships.
K8S_VERSION = kubernetes_validate.utils.latest_version()
# Kinds the Kubernetes schemas do not cover; checked by the CRD-derived validators instead.
CUSTOM_KINDS = {"ServiceMonitor", "ScaledObject"}
SCENARIOS = {p.name.removesuffix("-values.yaml"): p for p in CI_VALUES}

# What each scenario must render, so a broken condition cannot silently drop an object.
EXPECTED_KINDS = {
    "default": {"Deployment", "Service"},
    "gpu-pool": {"Deployment", "Service", "PodDisruptionBudget"},
    "autoscaling-hpa": {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget"},
    "keda": {"Deployment", "Service", "ScaledObject", "ServiceMonitor"},
    "pdb": {"Deployment", "Service", "PodDisruptionBudget"},
    "servicemonitor": {"Deployment", "Service", "ServiceMonitor", "ConfigMap"},
    "pvc-cache": {"Deployment", "Service", "PersistentVolumeClaim", "PodDisruptionBudget"},
    "existing-claim": {"Deployment", "Service"},
    "model-image": {"Deployment", "Service"},
    "network-ingress": {"Deployment", "Service", "NetworkPolicy", "Ingress", "ServiceAccount"},
    "scale-to-zero-network": {"Deployment", "Service", "ScaledObject", "NetworkPolicy", "Ingress"},
    "slot-blue": {"Deployment", "Service", "PodDisruptionBudget"},
    "slot-green": {"Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget"},
    "tracing": {"Deployment", "Service"},
}

COMMON_LABELS = (
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/version",
    "app.kubernetes.io/managed-by",
    "app.kubernetes.io/part-of",
    "app.kubernetes.io/component",
    "helm.sh/chart",
)

scenario = pytest.mark.parametrize("values_file", CI_VALUES, ids=list(SCENARIOS))


def test_should_cover_every_scenario_the_issue_lists_if_ci_values_change() -> None:
    assert set(SCENARIOS) == set(EXPECTED_KINDS)


@scenario
def test_should_pass_helm_lint_strict_if_scenario_values_are_used(
    helm: Helm, values_file: Path
) -> None:
    out = helm.run(
        "lint",
        "--strict",
        "--namespace",
        NAMESPACE,
        str(values_file.parents[1]),
        "-f",
        str(values_file),
    )
    assert "0 chart(s) failed" in out


@scenario
def test_should_render_the_expected_kinds_if_scenario_values_are_used(
    helm: Helm, values_file: Path
) -> None:
    objs = helm.template(values_files=[values_file])
    scenario_name = values_file.name.removesuffix("-values.yaml")
    assert {o["kind"] for o in objs} == EXPECTED_KINDS[scenario_name]


@scenario
def test_should_render_objects_valid_against_kubernetes_schemas_if_scenario_values_are_used(
    helm: Helm, values_file: Path
) -> None:
    objs = [o for o in helm.template(values_files=[values_file]) if o["kind"] not in CUSTOM_KINDS]
    for obj in objs:
        # strict: unknown fields are errors too (as server-side apply with strict validation).
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


@pytest.mark.parametrize("name", [n for n, k in EXPECTED_KINDS.items() if k & CUSTOM_KINDS])
def test_should_render_custom_resources_valid_against_their_crd_schemas_if_enabled(
    helm: Helm, crd_validator: str, name: str
) -> None:
    custom = [o for o in helm.template(values_files=[SCENARIOS[name]]) if o["kind"] in CUSTOM_KINDS]
    assert custom
    results = validate_custom_resources(crd_validator, custom)
    assert [r for r in results if r["error"]] == []


@scenario
def test_should_namespace_and_label_every_object_if_scenario_values_are_used(
    helm: Helm, values_file: Path
) -> None:
    for obj in helm.template(values_files=[values_file]):
        meta = obj["metadata"]
        assert meta["namespace"] == NAMESPACE, obj["kind"]
        for label in COMMON_LABELS:
            assert meta["labels"].get(label), f"{obj['kind']} lacks {label}"
        assert meta["labels"]["app.kubernetes.io/instance"] == RELEASE
        assert meta["labels"]["app.kubernetes.io/name"] == "clipserve"


@scenario
def test_should_render_identical_output_if_rendered_twice(helm: Helm, values_file: Path) -> None:
    # The operator server-side applies the rendering; any drift would cause needless updates.
    first = helm.template_text(values_files=[values_file])
    assert helm.template_text(values_files=[values_file]) == first


def test_should_reject_invalid_custom_resources_if_crd_validator_runs(crd_validator: str) -> None:
    # The validators must be able to fail, or the test above proves nothing.
    bad = [
        {
            "apiVersion": "keda.sh/v1alpha1",
            "kind": "ScaledObject",
            "metadata": {"name": "x"},
            "spec": {
                "scaleTargetRef": {"name": "x"},
                "minReplicaCount": "one",
                "triggers": [{"type": "prometheus", "metadata": {}}],
            },
        },
        {
            "apiVersion": "monitoring.coreos.com/v1",
            "kind": "ServiceMonitor",
            "metadata": {"name": "x"},
            "spec": {"selector": {}, "endpoints": [{"port": "http", "interval": "15 seconds"}]},
        },
    ]
    results = validate_custom_resources(crd_validator, bad)
    assert all(r["error"] for r in results), results


def test_should_reject_unknown_fields_if_kubernetes_validate_is_strict(helm: Helm) -> None:
    deployment = next(o for o in helm.template() if o["kind"] == "Deployment")
    deployment["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]["httpGett"] = {}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(deployment, K8S_VERSION, strict=True)
