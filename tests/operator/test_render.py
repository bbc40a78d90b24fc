"""Spec -> chart values -> objects; rendered with the real helm and the real clipserve chart."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import pytest
import yaml
from clipserve_operator.constants import MODEL_ANNOTATION, OWNER_LABEL, SLOT_LABEL
from clipserve_operator.render import (
    autoscaling_enabled,
    chart_values,
    deep_merge,
    desired_objects,
    endpoint,
    helm_template,
    render_state,
)
from clipserve_operator.swap import SwapState

REPO = Path(__file__).resolve().parents[2]
CHART = str(REPO / "charts/clipserve")
EXAMPLES = sorted((REPO / "manifests/examples").glob("*.yaml"))
OWNER = {"metadata": {"name": "search", "namespace": "ml", "uid": "1234"}}
A, B = "ViT-B-32:openai", "ViT-L-14:openai"


def _spec(**extra: Any) -> dict[str, Any]:
    return {"model": B, "replicas": 2, **extra}


def test_spec_fields_map_onto_chart_values() -> None:
    spec = _spec(
        gpu={"count": 1, "resourceName": "nvidia.com/gpu"},
        nodePool={
            "nodeSelector": {"pool": "gpu"},
            "tolerations": [{"key": "k", "operator": "Exists"}],
        },
        batching={"maxBatchSize": 64, "maxWaitMs": 5, "computeWorkers": 4},
        monitoring={"serviceMonitor": True, "interval": "10s"},
        autoscaling={"enabled": True, "minReplicas": 1, "maxReplicas": 8},
    )
    values = chart_values("search", spec, model=A, slot="green", service_slot="blue")
    assert values["fullnameOverride"] == "search" and values["model"] == A
    assert values["slot"] == "green" and values["service"]["slot"] == "blue"
    assert values["gpu"] == {"count": 1, "resourceName": "nvidia.com/gpu"}
    assert values["nodeSelector"] == {"pool": "gpu"}
    assert values["batching"] == {"maxBatchSize": 64, "maxWaitMs": 5, "computeWorkers": 4}
    assert values["serviceMonitor"] == {"enabled": True, "interval": "10s"}
    assert values["autoscaling"] == {"enabled": True, "minReplicas": 1, "maxReplicas": 8}
    assert values["podLabels"] == {OWNER_LABEL: "search"}


def test_queue_depth_alone_leaves_cpu_out_of_the_hpa_unless_asked_for() -> None:
    alone = chart_values(
        "search",
        _spec(autoscaling={"maxReplicas": 4, "queueDepthPerPod": 8}),
        model=A,
        slot="blue",
        service_slot="blue",
    )
    assert alone["autoscaling"]["targetCPUUtilizationPercentage"] is None
    both = {"queueDepthPerPod": 8, "targetCPUUtilizationPercentage": 60}
    values = chart_values(
        "search", _spec(autoscaling=both), model=A, slot="blue", service_slot="blue"
    )
    assert values["autoscaling"]["targetCPUUtilizationPercentage"] == 60


def test_raw_values_merge_but_cannot_move_the_service_or_rename() -> None:
    spec = _spec(
        values={
            "fullnameOverride": "evil",
            "slot": "x",
            "service": {"slot": "x", "type": "NodePort"},
            "drain": {"graceSeconds": 9},
        }
    )
    values = chart_values("search", spec, model=A, slot="blue", service_slot="blue")
    assert values["fullnameOverride"] == "search" and values["slot"] == "blue"
    assert values["service"] == {"slot": "blue", "type": "NodePort"}
    assert values["drain"] == {"graceSeconds": 9}


def test_deep_merge_merges_nested_maps_and_replaces_lists() -> None:
    assert deep_merge({"a": {"b": 1, "c": [1]}}, {"a": {"c": [2]}}) == {"a": {"b": 1, "c": [2]}}


def test_desired_objects_are_owned_labelled_and_leave_replicas_to_the_hpa() -> None:
    rendered = [
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": {"name": "search-blue"},
            "spec": {"replicas": 3},
        }
    ]
    owned = desired_objects(rendered, OWNER, autoscaling=True)[0]
    assert owned["metadata"]["namespace"] == "ml"
    assert owned["metadata"]["labels"][OWNER_LABEL] == "search"
    ref = owned["metadata"]["ownerReferences"][0]
    assert (ref["kind"], ref["uid"], ref["controller"]) == ("ClipService", "1234", True)
    assert "replicas" not in owned["spec"]
    assert desired_objects(rendered, OWNER, autoscaling=False)[0]["spec"]["replicas"] == 3
    assert rendered[0]["spec"]["replicas"] == 3  # input untouched


def test_autoscaling_is_on_when_the_block_is_present_unless_disabled() -> None:
    assert not autoscaling_enabled(_spec())
    assert autoscaling_enabled(_spec(autoscaling={"maxReplicas": 3}))
    assert not autoscaling_enabled(_spec(autoscaling={"enabled": False}))


def test_autoscaling_is_on_when_keda_scales_the_service_through_values() -> None:
    # KEDA's HPA owns replicas then: the operator must neither apply nor report spec.replicas.
    assert autoscaling_enabled(_spec(values={"keda": {"enabled": True, "minReplicas": 0}}))


@pytest.mark.helm
def test_blue_green_renders_both_slots_and_one_service_on_the_serving_slot(helm_bin: str) -> None:
    render = partial(helm_template, helm_bin, CHART, "search", "ml")
    objects = render_state(render, "search", _spec(), SwapState("blue", A, "green", B))
    deployments = {o["metadata"]["name"]: o for o in objects if o["kind"] == "Deployment"}
    assert set(deployments) == {"search-blue", "search-green"}
    assert deployments["search-blue"]["metadata"]["annotations"][MODEL_ANNOTATION] == A
    assert deployments["search-green"]["metadata"]["annotations"][MODEL_ANNOTATION] == B
    services = [o for o in objects if o["kind"] == "Service"]
    assert len(services) == 1 and services[0]["spec"]["selector"][SLOT_LABEL] == "blue"
    assert len({(o["kind"], o["metadata"]["name"]) for o in objects}) == len(objects)


@pytest.mark.helm
def test_rolling_swap_renders_one_slot_with_the_new_model(helm_bin: str) -> None:
    render = partial(helm_template, helm_bin, CHART, "search", "ml")
    objects = render_state(
        render, "search", _spec(swapStrategy="Rolling"), SwapState("blue", A, "blue", B)
    )
    deployments = [o for o in objects if o["kind"] == "Deployment"]
    assert [d["metadata"]["name"] for d in deployments] == ["search-blue"]
    assert deployments[0]["metadata"]["annotations"][MODEL_ANNOTATION] == B


@pytest.mark.helm
@pytest.mark.parametrize("example", EXAMPLES, ids=lambda p: p.stem)
def test_every_example_renders_through_the_chart_schema(helm_bin: str, example: Path) -> None:
    doc = yaml.safe_load(example.read_text())
    name = doc["metadata"]["name"]
    render = partial(helm_template, helm_bin, CHART, name, "ml")
    objects = render_state(render, name, doc["spec"], SwapState("blue", doc["spec"]["model"]))
    kinds = {o["kind"] for o in objects}
    assert {"Deployment", "Service"} <= kinds
    assert ("HorizontalPodAutoscaler" in kinds) == autoscaling_enabled(doc["spec"])


@pytest.mark.helm
def test_the_endpoint_is_the_gate_when_keda_may_scale_to_zero(helm_bin: str) -> None:
    render = partial(helm_template, helm_bin, CHART, "search", "ml")
    gated = _spec(values={"keda": {"enabled": True, "minReplicas": 0}})
    objects = render_state(render, "search", gated, SwapState("blue", B))
    assert (
        endpoint(objects, "ml", "cluster.local") == "http://search-gate.ml.svc.cluster.local:3000"
    )
    plain = render_state(render, "search", _spec(), SwapState("blue", B))
    assert endpoint(plain, "ml", "cluster.local") == "http://search.ml.svc.cluster.local:3000"


@pytest.mark.helm
def test_a_clipservice_traces_to_the_collector_its_values_name(helm_bin: str) -> None:
    render = partial(helm_template, helm_bin, CHART, "search", "ml")
    traced = _spec(values={"tracing": {"endpoint": "http://otel.obs:4318", "samplerArg": "0.1"}})
    objects = render_state(render, "search", traced, SwapState("blue", B))
    (deployment,) = [o for o in objects if o["kind"] == "Deployment"]
    env = {
        e["name"]: e.get("value")
        for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]
    }
    assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "http://otel.obs:4318"
    assert env["OTEL_TRACES_SAMPLER_ARG"] == "0.1"
    assert env["OTEL_SERVICE_NAME"] == "search"  # the ClipService; the pod names its slot
