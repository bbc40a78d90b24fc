"""The blue/green slot contract with the operator (see shared contracts: do not change lightly)."""

from __future__ import annotations

import pytest

from tests.support.rendering import CHART, Helm, only

pytestmark = pytest.mark.helm

SLOT = "clipserve.io/slot"
SELECTOR = {"app.kubernetes.io/name": "clipserve", "app.kubernetes.io/instance": "clip"}
EVERYTHING = {
    "autoscaling": {"enabled": True, "minReplicas": 2},
    "serviceMonitor": {"enabled": True},
    "networkPolicy": {"enabled": True},
    "ingress": {"enabled": True},
    "dashboards": {"enabled": True},
}


def names(objs: list[dict]) -> dict[str, str]:
    return {o["kind"]: o["metadata"]["name"] for o in objs}


def test_should_suffix_slotted_objects_and_keep_shared_names_if_slot_is_set(helm: Helm) -> None:
    assert names(helm.template({"slot": "blue", **EVERYTHING})) == {
        "Deployment": "clip-clipserve-blue",
        "HorizontalPodAutoscaler": "clip-clipserve-blue",
        "PodDisruptionBudget": "clip-clipserve-blue",
        "Service": "clip-clipserve",
        "ServiceMonitor": "clip-clipserve",
        "NetworkPolicy": "clip-clipserve",
        "Ingress": "clip-clipserve",
        "ConfigMap": "clip-clipserve",
    }
    keda = helm.template({"slot": "blue", "keda": {"enabled": True}})
    assert names(keda)["ScaledObject"] == "clip-clipserve-blue"


def test_should_target_the_slotted_deployment_if_slot_is_set(helm: Helm) -> None:
    objs = helm.template({"slot": "green", **EVERYTHING})
    assert (
        only(objs, "HorizontalPodAutoscaler")["spec"]["scaleTargetRef"]["name"]
        == "clip-clipserve-green"
    )
    keda = helm.template({"slot": "green", "keda": {"enabled": True}})
    assert only(keda, "ScaledObject")["spec"]["scaleTargetRef"]["name"] == "clip-clipserve-green"


def test_should_label_deployment_and_pods_with_the_slot_if_slot_is_set(helm: Helm) -> None:
    objs = helm.template(values_files=[CHART / "ci" / "slot-blue-values.yaml"])
    deployment = only(objs, "Deployment")
    assert deployment["metadata"]["labels"][SLOT] == "blue"
    assert deployment["spec"]["template"]["metadata"]["labels"][SLOT] == "blue"
    assert deployment["spec"]["selector"]["matchLabels"] == {**SELECTOR, SLOT: "blue"}
    pdb = only(objs, "PodDisruptionBudget")
    assert pdb["spec"]["selector"]["matchLabels"] == {**SELECTOR, SLOT: "blue"}


def test_should_select_only_the_service_slot_if_service_slot_is_set(helm: Helm) -> None:
    objs = helm.template(values_files=[CHART / "ci" / "slot-blue-values.yaml"])
    assert only(objs, "Service")["spec"]["selector"] == {**SELECTOR, SLOT: "blue"}


def test_should_select_every_slot_if_service_slot_is_empty(helm: Helm) -> None:
    objs = helm.template({"slot": "green"})
    assert only(objs, "Service")["spec"]["selector"] == SELECTOR
    policy = only(
        helm.template({"slot": "green", "networkPolicy": {"enabled": True}}), "NetworkPolicy"
    )
    assert policy["spec"]["podSelector"]["matchLabels"] == SELECTOR


def test_should_carry_no_slot_label_nor_suffix_if_slot_is_empty(helm: Helm) -> None:
    objs = helm.template({"autoscaling": {"enabled": True, "minReplicas": 2}})
    for obj in objs:
        assert SLOT not in obj["metadata"]["labels"]
        assert obj["metadata"]["name"] == "clip-clipserve"
    assert only(objs, "Deployment")["spec"]["selector"]["matchLabels"] == SELECTOR


def test_should_render_only_the_slot_objects_if_service_is_disabled(helm: Helm) -> None:
    objs = helm.template(values_files=[CHART / "ci" / "slot-green-values.yaml"])
    assert names(objs) == {
        "Deployment": "clip-clipserve-green",
        "HorizontalPodAutoscaler": "clip-clipserve-green",
        "PodDisruptionBudget": "clip-clipserve-green",
    }
