"""status.autoscaler from HorizontalPodAutoscalers as the HPA controller and KEDA write them."""

from __future__ import annotations

from typing import Any

from clipserve_operator.autoscaler import autoscaler_status, metric_summaries, scaling

QUEUE = {
    "type": "Pods",
    "pods": {
        "metric": {"name": "clipserve_queue_depth"},
        "target": {"type": "AverageValue", "averageValue": "4"},
    },
}
CPU = {
    "type": "Resource",
    "resource": {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 80}},
}


def hpa(
    target: str = "search-blue",
    conditions: list[dict[str, str]] | None = None,
    current_metrics: list[dict[str, Any]] | None = None,
    **status: Any,
) -> dict[str, Any]:
    """An autoscaling/v2 HPA on queue depth and CPU scaling a Deployment."""
    obj: dict[str, Any] = {
        "metadata": {"name": target},
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": target},
            "minReplicas": 1,
            "maxReplicas": 4,
            "metrics": [QUEUE, CPU],
        },
        "status": {**status, "conditions": conditions or []},
    }
    if current_metrics is not None:
        obj["status"]["currentMetrics"] = current_metrics
    return obj


def cond(type_: str, ok: bool, reason: str, message: str = "") -> dict[str, str]:
    return {"type": type_, "status": str(ok), "reason": reason, "message": message}


def test_the_hpa_of_the_serving_slot_is_the_one_reported() -> None:
    blue, green = hpa("search-blue"), hpa("search-green")
    assert scaling([green, blue], "search-blue") is blue
    assert scaling([green], "search-blue") is None


def test_a_metric_the_adapter_does_not_serve_is_why_it_cannot_scale() -> None:
    # What the HPA controller writes when custom.metrics.k8s.io has no such metric.
    message = (
        "the HPA was unable to compute the replica count: unable to get metric"
        " clipserve_queue_depth: unable to fetch metrics from custom metrics API: the server"
        " could not find the metric clipserve_queue_depth for pods"
    )
    status = autoscaler_status(
        hpa(
            conditions=[
                cond("AbleToScale", True, "SucceededGetScale"),
                cond("ScalingActive", False, "FailedGetPodsMetric", message),
            ],
            currentReplicas=1,
            desiredReplicas=0,
        )
    )
    assert status is not None
    assert status["canScale"] is False
    assert (status["reason"], status["message"]) == ("FailedGetPodsMetric", message)
    assert (status["currentReplicas"], status["desiredReplicas"]) == (1, 0)
    assert status["metrics"] == ["clipserve_queue_depth ?/4", "cpu ?/80%"]


def test_a_scaling_hpa_reports_its_metrics_and_what_it_wants() -> None:
    status = autoscaler_status(
        hpa(
            conditions=[
                cond("AbleToScale", True, "SucceededRescale", "new size: 2"),
                cond("ScalingActive", True, "ValidMetricFound", "computed from pods metric"),
                cond("ScalingLimited", False, "DesiredWithinRange"),
            ],
            current_metrics=[
                {
                    "type": "Pods",
                    "pods": {
                        "metric": {"name": "clipserve_queue_depth"},
                        "current": {"averageValue": "9500m"},
                    },
                },
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "current": {"averageUtilization": 93, "averageValue": "930m"},
                    },
                },
            ],
            currentReplicas=1,
            desiredReplicas=2,
            lastScaleTime="2026-11-29T21:00:00Z",
        )
    )
    assert status == {
        "name": "search-blue",
        "minReplicas": 1,
        "maxReplicas": 4,
        "currentReplicas": 1,
        "desiredReplicas": 2,
        "metrics": ["clipserve_queue_depth 9500m/4", "cpu 93%/80%"],
        "canScale": True,
        "reason": "ValidMetricFound",
        "message": "computed from pods metric",
        "lastScaleTime": "2026-11-29T21:00:00Z",
    }


def test_a_limit_reached_is_shown_while_it_can_still_scale() -> None:
    status = autoscaler_status(
        hpa(
            conditions=[
                cond("AbleToScale", True, "ReadyForNewScale"),
                cond("ScalingActive", True, "ValidMetricFound"),
                cond("ScalingLimited", True, "TooManyReplicas", "the desired count is more than 4"),
            ]
        )
    )
    assert status is not None and status["canScale"] is True
    assert status["reason"] == "TooManyReplicas"


def test_an_hpa_not_yet_computed_cannot_scale_yet() -> None:
    status = autoscaler_status(hpa())
    assert status is not None and status["canScale"] is False and status["reason"] == "Pending"


def test_a_kedas_external_metric_is_summarised_by_its_name() -> None:
    external = {
        "type": "External",
        "external": {
            "metric": {"name": "s0-prometheus"},
            "target": {"type": "AverageValue", "averageValue": "32"},
        },
    }
    obj = hpa(
        current_metrics=[
            {
                "type": "External",
                "external": {"metric": {"name": "s0-prometheus"}, "current": {"averageValue": "7"}},
            }
        ]
    )
    obj["spec"]["metrics"] = [external]
    assert metric_summaries(obj) == ["s0-prometheus 7/32"]


def test_no_hpa_means_no_autoscaler_status() -> None:
    assert autoscaler_status(None) is None


def test_kedas_hpa_idling_at_zero_is_scaled_to_zero_not_stuck() -> None:
    idle = [
        cond("AbleToScale", True, "SucceededGetScale"),
        cond(
            "ScalingActive",
            False,
            "ScalingDisabled",
            "scaling is disabled since the replica count of the target is zero",
        ),
    ]
    keda = hpa(conditions=idle, currentReplicas=0, desiredReplicas=0)
    keda["metadata"]["name"] = "keda-hpa-search-blue"
    status = autoscaler_status(keda)
    assert status is not None and status["canScale"] is True
    assert status["reason"] == "ScaledToZero" and "KEDA" in status["message"]
    # A plain HPA whose Deployment someone scaled to 0 really is disabled.
    manual = autoscaler_status(hpa(conditions=idle, currentReplicas=0))
    assert manual is not None and manual["canScale"] is False
    assert manual["reason"] == "ScalingDisabled"


def deployment(want: int, have: int) -> dict[str, Any]:
    """The serving Deployment as the reconcile reads it: spec.replicas and its pods."""
    return {
        "metadata": {"name": "search-blue"},
        "spec": {"replicas": want},
        "status": {"replicas": have},
    }


def keda_hpa(conditions: list[dict[str, str]], **status: Any) -> dict[str, Any]:
    obj = hpa(conditions=conditions, **status)
    obj["metadata"]["name"] = "keda-hpa-search-blue"
    return obj


def test_kedas_hpa_not_yet_synced_after_the_scale_to_zero_still_reads_scaled_to_zero() -> None:
    # KEDA moved the Deployment to 0; the HPA says what it said before until its next sync.
    stale = keda_hpa(
        [
            cond("AbleToScale", True, "ReadyForNewScale"),
            cond("ScalingActive", True, "ValidMetricFound"),
        ],
        currentReplicas=1,
        desiredReplicas=1,
    )
    status = autoscaler_status(stale, deployment(0, 0))
    assert status is not None
    assert (status["reason"], status["canScale"]) == ("ScaledToZero", True)
    assert (status["currentReplicas"], status["desiredReplicas"]) == (0, 0)


def test_kedas_hpa_not_yet_synced_after_the_wake_up_is_not_shown_at_zero() -> None:
    # KEDA started the first pod; the HPA still says "disabled at zero" until its next sync.
    stale = keda_hpa(
        [
            cond("AbleToScale", True, "SucceededGetScale"),
            cond("ScalingActive", False, "ScalingDisabled", "the replica count is zero"),
        ],
        currentReplicas=0,
    )
    status = autoscaler_status(stale, deployment(1, 1))
    assert status is not None
    assert (status["reason"], status["canScale"], status["currentReplicas"]) == (
        "Activated",
        True,
        1,
    )


def test_the_replicas_shown_are_the_deployments_of_the_same_pass() -> None:
    status = autoscaler_status(
        hpa(conditions=[cond("ScalingActive", True, "ValidMetricFound")], currentReplicas=1),
        deployment(2, 2),
    )
    assert status is not None and status["currentReplicas"] == 2
