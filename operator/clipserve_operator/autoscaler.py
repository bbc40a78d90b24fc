"""The autoscaler's state for the ClipService's status, from its HorizontalPodAutoscaler (pure).

Both autoscaling modes end in an HPA: the chart's own (autoscaling.enabled) or the one KEDA
makes for the chart's ScaledObject, which carries the ScaledObject's labels, the owner label
among them. Its conditions say whether it can scale and, when it cannot, why (a metric the
adapter does not serve, a target it cannot read); its status says what it wants.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from .constants import Obj


def scaling(hpas: Iterable[Obj], deployment: str) -> Obj | None:
    """The HPA whose target is the named Deployment, if any."""
    for hpa in hpas:
        target = (hpa.get("spec") or {}).get("scaleTargetRef") or {}
        if target.get("kind") == "Deployment" and target.get("name") == deployment:
            return hpa
    return None


_KEDA_AT_ZERO = "no pods: KEDA starts one when its trigger activates"
_KEDA_WOKEN = "KEDA started the first pod; its HPA scales from its next sync on"


def _keda(hpa: Obj) -> bool:
    """True for the HPA KEDA makes for a ScaledObject (keda-hpa-<name>, as the chart leaves it)."""
    return str(hpa["metadata"]["name"]).startswith("keda-hpa-")


def _quantity(value: Mapping[str, Any]) -> str:
    """A metric value or target as the HPA states it (averageValue, value or utilization %)."""
    if "averageUtilization" in value:
        return f"{value['averageUtilization']}%"
    for key in ("averageValue", "value"):
        if key in value:
            return str(value[key])
    return "?"


def _body(metric: Mapping[str, Any]) -> Mapping[str, Any]:
    """A metric entry's own part (type Pods -> its `pods` field)."""
    kind = str(metric.get("type", ""))
    return metric.get(kind[:1].lower() + kind[1:]) or {}


def _metric_key(metric: Mapping[str, Any]) -> tuple[str, str]:
    """(type, name) of a metric spec or status entry (resource name or metric name)."""
    body = _body(metric)
    return str(metric.get("type", "")), str(body.get("name") or body.get("metric", {}).get("name"))


def metric_summaries(hpa: Obj) -> list[str]:
    """'name current/target' for each metric the HPA scales on ('?' until it has read one)."""
    current = {
        _metric_key(m): _body(m).get("current") or {}
        for m in (hpa.get("status") or {}).get("currentMetrics") or []
    }
    out = []
    for metric in (hpa.get("spec") or {}).get("metrics") or []:
        now = current.get(_metric_key(metric))
        target = _quantity(_body(metric).get("target") or {})
        out.append(f"{_metric_key(metric)[1]} {_quantity(now) if now else '?'}/{target}")
    return out


def autoscaler_status(hpa: Obj | None, deployment: Obj | None = None) -> dict[str, Any] | None:
    """status.autoscaler: replicas wanted and had, each metric, and why it cannot scale (if so).

    The HPA controller rewrites its status only at its next sync, so right after KEDA moves the
    serving Deployment to or from zero the HPA still says what it said before. Where the two
    disagree the Deployment, read in the same pass as the rest of the status, decides: the
    status is one snapshot, never replicas 0 beside a stale "ValidMetricFound".
    """
    if hpa is None:
        return None
    spec, status = hpa.get("spec") or {}, hpa.get("status") or {}
    conditions = {c.get("type"): c for c in status.get("conditions") or []}
    able, active = conditions.get("AbleToScale"), conditions.get("ScalingActive")
    blocking = next((c for c in (able, active) if c and c.get("status") == "False"), None)
    current, desired = int(status.get("currentReplicas", 0)), int(status.get("desiredReplicas", 0))
    if deployment is not None:
        current = int((deployment.get("status") or {}).get("replicas", 0))
    at_zero = (
        blocking is not None and blocking.get("reason") == "ScalingDisabled"
        if deployment is None
        else int((deployment.get("spec") or {}).get("replicas", 1)) == 0
    )
    if _keda(hpa) and at_zero:
        # KEDA holds the Deployment at zero and starts the first pod itself when its trigger
        # activates; its HPA idles meanwhile, which is no fault.
        blocking, desired = None, 0
        active = {"reason": "ScaledToZero", "message": _KEDA_AT_ZERO}
    elif _keda(hpa) and blocking is not None and blocking.get("reason") == "ScalingDisabled":
        # KEDA has just started the first pod; its HPA still says "disabled at zero" until its
        # next sync, when it takes over.
        blocking = None
        active = {"reason": "Activated", "message": _KEDA_WOKEN}
    if blocking is not None:
        reason, message = blocking.get("reason", ""), blocking.get("message", "")
    elif active is None:
        reason, message = "Pending", "the autoscaler has not read its metrics yet"
    else:
        limited = conditions.get("ScalingLimited") or {}
        shown = limited if limited.get("status") == "True" else active
        reason, message = shown.get("reason", ""), shown.get("message", "")
    return {
        "name": hpa["metadata"]["name"],
        "minReplicas": int(spec.get("minReplicas", 1)),
        "maxReplicas": int(spec.get("maxReplicas", 0)),
        "currentReplicas": current,
        "desiredReplicas": desired,
        "metrics": metric_summaries(hpa),
        "canScale": blocking is None and active is not None,
        "reason": reason,
        "message": message,
        **({"lastScaleTime": status["lastScaleTime"]} if status.get("lastScaleTime") else {}),
    }
