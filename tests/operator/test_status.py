"""Status from observed objects: Ready/Progressing/Degraded with the scheduler's own words."""

from __future__ import annotations

from typing import Any

from clipserve_operator.constants import SLOT_LABEL
from clipserve_operator.status import (
    Observed,
    compute_status,
    degraded_status,
    merge_conditions,
    transitions,
)
from clipserve_operator.swap import SwapState

A, B = "ViT-B-32:openai", "ViT-L-14:openai"
UNSCHEDULABLE = "0/4 nodes are available: 2 Insufficient nvidia.com/gpu, 2 node(s) didn't match"


def _deploy(want: int, ready: int) -> dict[str, Any]:
    return {"spec": {"replicas": want}, "status": {"readyReplicas": ready}}


def _pod(slot: str, *, scheduled: bool = True, waiting: str = "") -> dict[str, Any]:
    conds = (
        []
        if scheduled
        else [
            {
                "type": "PodScheduled",
                "status": "False",
                "reason": "Unschedulable",
                "message": UNSCHEDULABLE,
            }
        ]
    )
    statuses = (
        [{"state": {"waiting": {"reason": waiting, "message": "back-off"}}}] if waiting else []
    )
    return {
        "metadata": {"labels": {SLOT_LABEL: slot}},
        "status": {"conditions": conds, "containerStatuses": statuses},
    }


def _status(state: SwapState, observed: Observed, previous: dict[str, Any] | None = None):
    return compute_status(
        generation=3,
        state=state,
        observed=observed,
        endpoint="http://x.ns.svc.cluster.local:3000",
        selector="a=b",
        slot_label=SLOT_LABEL,
        previous=previous,
        now="2026-01-01T00:00:00Z",
    )


def _cond(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == type_)


def test_all_pods_ready_is_ready_and_not_progressing() -> None:
    status = _status(SwapState("blue", A), Observed(active=_deploy(2, 2), pending=None))
    assert _cond(status, "Ready")["status"] == "True"
    assert _cond(status, "Progressing")["status"] == "False"
    assert _cond(status, "Degraded")["status"] == "False"
    assert (status["replicas"], status["readyReplicas"], status["replicaSummary"]) == (2, 2, "2/2")
    assert status["observedGeneration"] == 3 and status["activeModel"] == A


def test_unschedulable_pods_degrade_with_the_scheduler_reason() -> None:
    observed = Observed(active=_deploy(1, 0), pending=None, pods=(_pod("blue", scheduled=False),))
    status = _status(SwapState("blue", A), observed)
    degraded = _cond(status, "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "Unschedulable"
    assert UNSCHEDULABLE in degraded["message"] and "slot blue" in degraded["message"]
    assert _cond(status, "Ready")["status"] == "False"


def test_failing_new_slot_keeps_ready_and_says_why() -> None:
    observed = Observed(
        active=_deploy(2, 2),
        pending=_deploy(2, 0),
        pods=(_pod("blue"), _pod("green", waiting="CrashLoopBackOff")),
    )
    status = _status(SwapState("blue", A, "green", B), observed)
    assert _cond(status, "Ready")["status"] == "True"
    progressing = _cond(status, "Progressing")
    assert progressing["reason"] == "SwapInProgress" and "0/2" in progressing["message"]
    degraded = _cond(status, "Degraded")
    assert degraded["reason"] == "CrashLoopBackOff" and "slot green" in degraded["message"]
    assert status["pendingModel"] == B and status["activeModel"] == A


LOG_TAIL = (
    "INFO:     Shutting down\n"
    "INFO:     Finished server process [1]\n"
    "clipserve: start-up failed: ViT-B-32:/m/x.pt: checkpoint file /m/x.pt does not exist\n"
)


def _crashed_pod(slot: str, state: dict[str, Any], last: dict[str, Any]) -> dict[str, Any]:
    pod = _pod(slot)
    pod["status"]["containerStatuses"] = [{"state": state, "lastState": last}]
    return pod


def test_a_crashing_server_degrades_with_its_own_last_words() -> None:
    exited = {"terminated": {"exitCode": 1, "reason": "Error", "message": LOG_TAIL}}
    backing_off = {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 20s"}}
    for state, last, reason in ((backing_off, exited, "CrashLoopBackOff"), (exited, {}, "Error")):
        observed = Observed(
            active=_deploy(1, 1), pending=_deploy(1, 0), pods=(_crashed_pod("green", state, last),)
        )
        degraded = _cond(_status(SwapState("blue", A, "green", B), observed), "Degraded")
        assert degraded["status"] == "True" and degraded["reason"] == reason
        assert degraded["message"] == (
            f"slot green: {reason}: clipserve: start-up failed: ViT-B-32:/m/x.pt:"
            " checkpoint file /m/x.pt does not exist"
        )


def test_a_container_that_exited_cleanly_is_no_problem() -> None:
    done = {"terminated": {"exitCode": 0, "reason": "Completed", "message": "bye"}}
    observed = Observed(active=_deploy(1, 1), pending=None, pods=(_crashed_pod("blue", done, {}),))
    assert _cond(_status(SwapState("blue", A), observed), "Degraded")["status"] == "False"


def test_render_error_is_degraded() -> None:
    observed = Observed(active=None, pending=None, error="helm template failed: bad")
    status = _status(SwapState("blue", A), observed)
    assert _cond(status, "Degraded")["reason"] == "ReconcileFailed"
    assert _cond(status, "Ready")["reason"] == "NotCreated"


def test_transition_time_kept_while_status_unchanged() -> None:
    old = [{"type": "Ready", "status": "True", "lastTransitionTime": "then"}]
    same = merge_conditions(old, [{"type": "Ready", "status": "True"}], "now")
    flipped = merge_conditions(old, [{"type": "Ready", "status": "False"}], "now")
    assert same[0]["lastTransitionTime"] == "then"
    assert flipped[0]["lastTransitionTime"] == "now"


def test_unchanged_status_is_identical_so_no_patch_is_sent() -> None:
    observed = Observed(active=_deploy(2, 2), pending=None)
    first = _status(SwapState("blue", A), observed)
    assert _status(SwapState("blue", A), observed, previous=first) == first


def test_events_for_swap_steps_and_degradation() -> None:
    ready = _status(SwapState("blue", A), Observed(active=_deploy(1, 1), pending=None))
    swapping = _status(
        SwapState("blue", A, "green", B),
        Observed(
            active=_deploy(1, 1), pending=_deploy(1, 0), pods=(_pod("green", scheduled=False),)
        ),
        previous=ready,
    )
    reasons = [r for _, r, _ in transitions(ready, swapping)]
    assert reasons == ["SwapStarted", "Unschedulable"]
    done = _status(SwapState("green", B), Observed(active=_deploy(1, 1), pending=None), swapping)
    assert [r for _, r, _ in transitions(swapping, done)] == ["SwapCompleted"]
    assert transitions(done, done) == []


def test_a_failure_shows_its_own_reason_and_message() -> None:
    observed = Observed(
        active=_deploy(1, 1), pending=None, error="forbidden: x", error_reason="Forbidden"
    )
    degraded = _cond(_status(SwapState("blue", A), observed), "Degraded")
    assert (degraded["status"], degraded["reason"], degraded["message"]) == (
        "True",
        "Forbidden",
        "forbidden: x",
    )


def test_a_new_cause_while_degraded_posts_another_warning() -> None:
    broken = _status(
        SwapState("blue", A), Observed(active=None, pending=None, error="a", error_reason="One")
    )
    other = _status(
        SwapState("blue", A),
        Observed(active=None, pending=None, error="b", error_reason="Two"),
        previous=broken,
    )
    assert transitions(broken, other) == [("Warning", "Two", "b")]
    assert transitions(other, other) == []


def test_degraded_status_replaces_only_the_degraded_condition() -> None:
    ready = _status(SwapState("blue", A), Observed(active=_deploy(1, 1), pending=None))
    status = degraded_status(ready, "Forbidden", "cannot list pods", 4, "later")
    assert set(status) == {"conditions"}
    assert _cond(status, "Ready") == _cond(ready, "Ready")
    degraded = _cond(status, "Degraded")
    assert (degraded["status"], degraded["reason"], degraded["observedGeneration"]) == (
        "True",
        "Forbidden",
        4,
    )
    assert degraded["lastTransitionTime"] == "later"


def _reporting(slot: str, message: str, exit_code: int = 0, name: str = "device") -> dict[str, Any]:
    """A pod whose init container ended as the kubelet records it."""
    done = {"exitCode": exit_code, "reason": "Completed", "message": message}
    pod = _pod(slot)
    pod["status"]["initContainerStatuses"] = [{"name": name, "state": {"terminated": done}}]
    return pod


def test_device_is_what_the_serving_slots_pods_reported() -> None:
    pods = (_reporting("blue", "cuda\n"), _reporting("blue", "cuda"), _reporting("green", "cpu"))
    observed = Observed(active=_deploy(2, 2), pending=_deploy(1, 0), pods=pods)
    assert _status(SwapState("blue", A, "green", B), observed)["device"] == "cuda"
    assert _status(SwapState("green", B), observed)["device"] == "cpu"


def test_pods_that_differ_show_every_device_and_unreported_ones_nothing() -> None:
    mixed = (_reporting("blue", "cuda"), _reporting("blue", "cpu"), _pod("blue"))
    assert (
        _status(SwapState("blue", A), Observed(_deploy(3, 3), None, mixed))["device"] == "cpu,cuda"
    )
    silent = (_pod("blue"), _reporting("blue", "cuda", exit_code=1), _reporting("blue", "x" * 40))
    assert _status(SwapState("blue", A), Observed(_deploy(3, 3), None, silent))["device"] == ""
    other = (_reporting("blue", "cuda", name="setup"),)
    assert _status(SwapState("blue", A), Observed(_deploy(1, 1), None, other))["device"] == ""


def test_a_crash_looping_init_container_is_degraded_with_its_last_words() -> None:
    pod = _pod("green")
    pod["status"]["initContainerStatuses"] = [
        {
            "name": "device",
            "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s"}},
            "lastState": {
                "terminated": {"exitCode": 1, "message": "a GPU was assigned\nbut no CUDA"}
            },
        }
    ]
    observed = Observed(active=_deploy(1, 1), pending=_deploy(1, 0), pods=(pod,))
    degraded = _cond(_status(SwapState("blue", A, "green", B), observed), "Degraded")
    assert degraded["reason"] == "CrashLoopBackOff"
    # The device check's own last words (the chart's FallbackToLogsOnError), not the back-off.
    assert degraded["message"] == "slot green: init container device: CrashLoopBackOff: but no CUDA"


def test_scaled_to_zero_is_one_snapshot_while_kedas_hpa_lags() -> None:
    # KEDA took the Deployment to 0; its HPA still reports its last sync (one pod, metric valid).
    hpa = {
        "metadata": {"name": "keda-hpa-x-blue"},
        "spec": {"scaleTargetRef": {"kind": "Deployment", "name": "x-blue"}},
        "status": {
            "currentReplicas": 1,
            "desiredReplicas": 1,
            "conditions": [
                {"type": "ScalingActive", "status": "True", "reason": "ValidMetricFound"}
            ],
        },
    }
    observed = Observed(active=_deploy(0, 0), pending=None, autoscaler=hpa)
    status = _status(SwapState("blue", A), observed)
    assert (status["replicas"], _cond(status, "Ready")["reason"]) == (0, "ScaledToZero")
    assert status["autoscaler"]["reason"] == "ScaledToZero"
    assert status["autoscaler"]["currentReplicas"] == 0
