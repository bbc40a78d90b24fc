"""ClipService status from observed Deployments and Pods (pure)."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from .autoscaler import autoscaler_status
from .constants import DEVICE_CONTAINER, Obj
from .promotion import Decision
from .redact import redact
from .spaces import slot_space
from .swap import SwapState
from .weights import COMPONENT, COMPONENT_LABEL, Weights, condition_fields

# PromotionHeld reasons a Warning event announces: holds only a new ClipJob can lift.
HELD_BY_A_CLIPJOB = frozenset({"ClipJobFailed", "ClipJobOtherSpace"})

# What a device report may say (torch device types: cuda, cpu, ...); anything else is ignored.
_DEVICE = re.compile(r"^[a-z][a-z0-9_]{0,15}$")
# Container waiting reasons that will not fix themselves.
_STUCK_REASONS = {
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
    "CreateContainerError",
    "RunContainerError",
}


@dataclass(frozen=True)
class Observed:
    """What the reconcile saw after applying."""

    active: Obj | None  # the active slot's Deployment
    pending: Obj | None  # the pending slot's Deployment (blue/green swap only)
    pods: tuple[Obj, ...] = ()
    autoscaler: Obj | None = None  # the HPA scaling the active slot (autoscaling on)
    error: str = ""  # a failed reconcile step, shown as Degraded with error_reason
    error_reason: str = "ReconcileFailed"
    spaces: Mapping[str, str] = field(default_factory=dict)  # pod uid -> its embedding space


def condition(type_: str, ok: bool, reason: str, message: str, generation: int) -> dict[str, Any]:
    """One status condition (lastTransitionTime is filled in by merge_conditions); its message
    names models and quotes pods' last words, so URLs in it lose their credentials."""
    return {
        "type": type_,
        "status": "True" if ok else "False",
        "reason": reason,
        "message": redact(message),
        "observedGeneration": generation,
    }


def merge_conditions(
    previous: Iterable[Mapping[str, Any]], new: Iterable[dict[str, Any]], now: str
) -> list[dict[str, Any]]:
    """Keep lastTransitionTime where a condition's status did not change."""
    before = {c.get("type"): c for c in previous}
    out = []
    for cond in new:
        old = before.get(cond["type"])
        same = old is not None and old.get("status") == cond["status"]
        out.append(
            {
                **cond,
                "lastTransitionTime": old.get("lastTransitionTime", now) if same and old else now,
            }
        )
    return out


def counts(deployment: Obj | None) -> tuple[int, int]:
    """(desired, ready) pods of a Deployment."""
    if not deployment:
        return 0, 0
    want = deployment.get("spec", {}).get("replicas", 1)
    return int(want), int((deployment.get("status") or {}).get("readyReplicas", 0))


def pod_problems(pods: Iterable[Obj], slot_label: str) -> list[tuple[str, str]]:
    """(reason, message) for pods that cannot run: the scheduler's, kubelet's or server's words."""
    problems: list[tuple[str, str]] = []
    seen: set[str] = set()
    for pod in pods:
        meta = pod.get("metadata", {})
        if meta.get("deletionTimestamp"):
            continue
        slot = (meta.get("labels") or {}).get(slot_label, "")
        where = f"slot {slot}" if slot else "pods"
        status = pod.get("status") or {}
        for cond in status.get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                msg = f"{where}: {cond.get('message') or cond.get('reason')}"
                if msg not in seen:
                    seen.add(msg)
                    problems.append((cond.get("reason") or "Unschedulable", msg))
        init = [
            (f"init container {cs.get('name')}: ", cs)
            for cs in status.get("initContainerStatuses") or []
        ]
        for who, cs in [*init, *(("", cs) for cs in status.get("containerStatuses") or [])]:
            state = cs.get("state") or {}
            waiting, failed = state.get("waiting") or {}, state.get("terminated") or {}
            if waiting.get("reason") in _STUCK_REASONS:
                # A crashing server's own last words say more than the kubelet's back-off.
                words = _last_words(cs.get("lastState") or {}) or waiting.get("message", "")
                reason = waiting["reason"]
            elif failed.get("exitCode"):  # exited with an error, about to be restarted
                words, reason = _last_words(state), failed.get("reason") or "Error"
            else:
                continue
            msg = f"{where}: {who}{reason}: {words}".rstrip(": ")
            if msg not in seen:
                seen.add(msg)
                problems.append((reason, msg))
    return problems


def _last_words(state: Obj) -> str:
    """The last line of a terminated container's message (the chart makes it the log tail)."""
    message = str((state.get("terminated") or {}).get("message") or "")
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    return lines[-1] if lines else ""


def pod_device(pod: Obj) -> str:
    """The device a pod reported from its init container (DEVICE_CONTAINER), or ""."""
    for cs in (pod.get("status") or {}).get("initContainerStatuses") or []:
        done = (cs.get("state") or {}).get("terminated") or {}
        if cs.get("name") == DEVICE_CONTAINER and done.get("exitCode") == 0:
            reported = str(done.get("message") or "").strip()
            return reported if _DEVICE.match(reported) else ""
    return ""


def serving_device(pods: Iterable[Obj], slot_label: str, slot: str) -> str:
    """Devices the serving slot's pods reported ("cuda", "cpu", or "cpu,cuda" when they differ)."""
    found = {
        pod_device(pod)
        for pod in pods
        if (pod.get("metadata", {}).get("labels") or {}).get(slot_label) == slot
        and not pod.get("metadata", {}).get("deletionTimestamp")
    }
    return ",".join(sorted(found - {""}))


def compute_status(
    *,
    generation: int,
    state: SwapState,
    observed: Observed,
    endpoint: str,
    selector: str,
    slot_label: str,
    previous: Mapping[str, Any] | None,
    now: str,
    weights: Sequence[Weights] = (),
    promotion: Decision | None = None,
    pending_endpoint: str = "",
) -> dict[str, Any]:
    """The full status: swap state, counts, endpoint, Ready/Progressing/Degraded, and with a
    shared cache WeightsReady and each model's prefetch (status.weights)."""
    want, ready = counts(observed.active)
    serving = state.active_model
    fetching = {w.model: w for w in weights if w.phase != "Ready"}
    conds = []
    if observed.active is None and serving in fetching:
        conds.append(
            condition(
                "Ready",
                False,
                "WeightsNotReady",
                f"the serving slot starts once its weights are in the cache: "
                f"{fetching[serving].summary()}",
                generation,
            )
        )
    elif observed.active is None:
        conds.append(
            condition(
                "Ready",
                False,
                "NotCreated",
                "the serving Deployment does not exist yet",
                generation,
            )
        )
    elif want == 0:
        conds.append(condition("Ready", False, "ScaledToZero", "replicas is 0", generation))
    elif ready >= want:
        conds.append(
            condition(
                "Ready", True, "AllPodsReady", f"{ready}/{want} pods of {serving} ready", generation
            )
        )
    else:
        conds.append(
            condition(
                "Ready",
                False,
                "PodsNotReady",
                f"{ready}/{want} pods of {serving} ready",
                generation,
            )
        )

    if state.blue_green and state.pending_model in fetching:
        msg = (
            f"prefetching the weights of {state.pending_model} before slot {state.pending_slot}"
            f" starts ({fetching[state.pending_model].summary()}); the Service stays on"
            f" {state.active_model} (slot {state.active_slot})"
        )
        conds.append(condition("Progressing", True, "PrefetchingWeights", msg, generation))
    elif state.blue_green:
        p_want, p_ready = counts(observed.pending)
        msg = (
            f"starting {state.pending_model} in slot {state.pending_slot}"
            f" ({p_ready}/{p_want} ready); the Service stays on {state.active_model}"
            f" (slot {state.active_slot}) until all are ready"
        )
        conds.append(condition("Progressing", True, "SwapInProgress", msg, generation))
    elif state.swapping:
        msg = (
            f"rolling {state.active_model} -> {state.pending_model} in place ({ready}/{want} ready)"
        )
        conds.append(condition("Progressing", True, "RollingUpdate", msg, generation))
    elif observed.active is not None and ready != want:
        conds.append(
            condition(
                "Progressing", True, "ScalingReplicas", f"{ready}/{want} pods ready", generation
            )
        )
    else:
        conds.append(condition("Progressing", False, "Complete", f"serving {serving}", generation))

    problems = pod_problems(
        [p for p in observed.pods if not _is_prefetch(p)], slot_label
    )  # a failed prefetch is said once, below, with its model
    failed = [w for w in weights if w.phase == "Failed"]
    if observed.error:
        conds.append(condition("Degraded", True, observed.error_reason, observed.error, generation))
    elif failed:
        msg = "; ".join(f"weights of {w.model}: {w.message}" for w in failed)
        conds.append(condition("Degraded", True, "WeightsDownloadFailed", msg, generation))
    elif problems:
        reason = problems[0][0]
        conds.append(
            condition("Degraded", True, reason, "; ".join(m for _, m in problems), generation)
        )
    else:
        conds.append(condition("Degraded", False, "AsExpected", "no problems observed", generation))

    if weights:
        ok, reason, msg = condition_fields(list(weights))
        conds.append(condition("WeightsReady", ok, reason, msg, generation))
    previous = previous or {}
    held = promotion is not None and not promotion.promote
    if promotion is not None:
        conds.append(
            condition("PromotionHeld", held, promotion.reason, promotion.message, generation)
        )
    elif any(c.get("type") == "PromotionHeld" for c in previous.get("conditions") or []):
        conds.append(condition("PromotionHeld", False, "NotHeld", f"serving {serving}", generation))
    extra: dict[str, Any] = {}
    if weights:
        extra["weights"] = [w.to_status() for w in weights]
    elif previous.get("weights"):
        extra["weights"] = None  # the merge patch removes it: no prefetch any more
    return {
        **extra,
        **state.to_status(),
        "observedGeneration": generation,
        "replicas": want,
        "readyReplicas": ready,
        "replicaSummary": f"{ready}/{want}",
        "selector": selector,
        "endpoint": endpoint,
        # None removes it (a merge patch) once no Manual swap is held.
        "pendingEndpoint": pending_endpoint or None,
        "device": serving_device(observed.pods, slot_label, state.active_slot),
        "activeSpace": slot_space(observed.pods, observed.spaces, slot_label, state.active_slot),
        "pendingSpace": slot_space(observed.pods, observed.spaces, slot_label, state.pending_slot)
        if state.blue_green
        else "",
        # None removes it (a merge patch) once autoscaling is off.
        "autoscaler": autoscaler_status(observed.autoscaler, observed.active),
        "conditions": merge_conditions(previous.get("conditions") or [], conds, now),
    }


def _is_prefetch(pod: Obj) -> bool:
    labels = pod.get("metadata", {}).get("labels") or {}
    return labels.get(COMPONENT_LABEL) == COMPONENT


def degraded_status(
    previous: Mapping[str, Any], reason: str, message: str, generation: int, now: str
) -> dict[str, Any]:
    """Only the Degraded condition replaced, for a reconcile that could not observe anything."""
    kept = [c for c in previous.get("conditions") or [] if c.get("type") != "Degraded"]
    new = condition("Degraded", True, reason, message, generation)
    return {"conditions": merge_conditions(previous.get("conditions") or [], [*kept, new], now)}


def transitions(
    previous: Mapping[str, Any] | None, current: Mapping[str, Any]
) -> list[tuple[str, str, str]]:
    """(type, reason, message) of events worth posting: condition flips and swap steps."""
    previous = previous or {}
    before = {c["type"]: c for c in previous.get("conditions") or []}
    events: list[tuple[str, str, str]] = []
    if current.get("pendingModel") and current.get("pendingModel") != previous.get("pendingModel"):
        events.append(
            (
                "Normal",
                "SwapStarted",
                redact(f"starting {current['pendingModel']} in slot {current['pendingSlot']}"),
            )
        )
    if previous.get("activeModel") and current.get("activeModel") != previous.get("activeModel"):
        events.append(
            (
                "Normal",
                "SwapCompleted",
                redact(f"now serving {current['activeModel']} from slot {current['activeSlot']}"),
            )
        )
    for cond in current.get("conditions") or []:
        old = before.get(cond["type"]) or {}
        flipped = old.get("status") != cond["status"]
        # once per cause
        if cond["type"] == "PromotionHeld" and cond["reason"] in HELD_BY_A_CLIPJOB:
            if old.get("reason") != cond["reason"]:
                events.append(("Warning", cond["reason"], cond["message"]))
        elif cond["type"] == "Degraded" and cond["status"] == "True":
            if flipped or old.get("reason") != cond["reason"]:  # degraded, or for a new cause
                events.append(("Warning", cond["reason"], cond["message"]))
        elif cond["type"] == "Ready" and flipped and (old or cond["status"] == "True"):
            events.append(
                ("Normal", "Ready" if cond["status"] == "True" else "NotReady", cond["message"])
            )
    return events
