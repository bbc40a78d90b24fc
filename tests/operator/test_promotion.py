"""spec.swap.promotion: when a ready swap may move the Service (pure)."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
from clipserve_operator.promotion import decide, pending_service
from clipserve_operator.render import pending_endpoint
from clipserve_operator.status import transitions

A, B = "ViT-B-32:openai", "ViT-B-16:openai"
MANUAL = {"model": B, "swap": {"promotion": "Manual"}}


def _clipjob(
    name: str, phase: str, model: str = B, promotes: str = "search", space: str = ""
) -> dict[str, Any]:
    status: dict[str, Any] = {
        "phase": phase,
        "model": model,
        "space": space,
        "progress": "3/8 shards (37%)",
    }
    if phase == "Failed":
        status["conditions"] = [
            {"type": "Failed", "status": "True", "message": "index 0: no such bucket"}
        ]
    return {
        "metadata": {"name": name},
        "spec": {"promotes": {"clipService": promotes}},
        "status": status,
    }


def test_automatic_promotes_as_before() -> None:
    assert decide({"model": B}, "search", B, []).promote


def test_manual_holds_until_promote_names_the_pending_model() -> None:
    held = decide(MANUAL, "search", B, [])
    assert not held.promote and held.reason == "AwaitingPromotion"
    stale = decide({**MANUAL, "swap": {"promotion": "Manual", "promote": A}}, "search", B, [])
    assert not stale.promote  # promoting an older model moves nothing
    assert decide(
        {**MANUAL, "swap": {"promotion": "Manual", "promote": B}}, "search", B, []
    ).promote


def test_a_completed_clipjob_of_the_pending_model_promotes_and_nothing_else_does() -> None:
    running = decide(MANUAL, "search", B, [_clipjob("re", "Running")])
    assert (running.promote, running.reason) == (False, "ClipJobRunning")
    assert "3/8 shards" in running.message
    others = [
        _clipjob("old-model", "Succeeded", model=A),
        _clipjob("other-service", "Succeeded", promotes="other"),
    ]
    assert not decide(MANUAL, "search", B, others).promote
    done = decide(MANUAL, "search", B, [*others, _clipjob("re", "Succeeded")])
    assert (done.promote, done.reason) == (True, "ClipJobComplete")


def test_a_clipjob_of_another_space_under_the_same_spec_never_promotes() -> None:
    """The hub tag moved between the pending slot's load and the job's: same spec, other
    weights. Once both spaces are known they must be equal; unknown on either side, the
    spec alone decides (as before the digest)."""
    here, there = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    moved = decide(MANUAL, "search", B, [_clipjob("re", "Succeeded", space=there)], here)
    assert (moved.promote, moved.reason) == (False, "ClipJobOtherSpace")
    assert f"re-embedded in space {there}, the pending slot serves {here}" in moved.message
    cond = {"type": "PromotionHeld", "status": "True", "reason": moved.reason, "message": "x"}
    assert transitions({}, {"conditions": [cond]}) == [("Warning", "ClipJobOtherSpace", "x")]
    jobs = [_clipjob("re", "Succeeded", space=there), _clipjob("re2", "Succeeded", space=here)]
    assert decide(MANUAL, "search", B, jobs, here).promote  # a run in the right space
    assert decide(MANUAL, "search", B, [_clipjob("re", "Succeeded", space=there)], "").promote
    assert decide(MANUAL, "search", B, [_clipjob("re", "Succeeded")], here).promote


def test_a_failed_clipjob_never_promotes_and_says_why() -> None:
    failed = decide(MANUAL, "search", B, [_clipjob("re", "Failed")])
    assert (failed.promote, failed.reason) == (False, "ClipJobFailed")
    assert "ClipJob re failed: index 0: no such bucket" in failed.message
    cond = {"type": "PromotionHeld", "status": "True", "reason": failed.reason, "message": "x"}
    assert transitions({}, {"conditions": [cond]}) == [("Warning", "ClipJobFailed", "x")]
    # a retry that completes promotes after all
    assert decide(
        MANUAL, "search", B, [_clipjob("re", "Failed"), _clipjob("re2", "Succeeded")]
    ).promote


def test_the_pending_service_selects_only_the_pending_slot() -> None:
    service = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "search", "labels": {"app": "x"}},
        "spec": {
            "type": "LoadBalancer",
            "clusterIP": "10.0.0.1",
            "selector": {"app": "x", "clipserve.io/slot": "blue"},
            "ports": [{"name": "http", "port": 3000, "targetPort": "http"}],
        },
    }
    pending = pending_service(service, "green", "clipserve.io/slot")
    assert pending["metadata"]["name"] == "search-pending"
    assert pending["spec"]["selector"] == {"app": "x", "clipserve.io/slot": "green"}
    assert pending["spec"]["type"] == "ClusterIP" and "clusterIP" not in pending["spec"]
    kubernetes_validate.validate(
        {**pending, "metadata": {**pending["metadata"], "namespace": "ml"}},
        kubernetes_validate.utils.latest_version(),
        strict=True,
    )
    url = pending_endpoint([service, pending], "ml", "cluster.local")
    assert url == "http://search-pending.ml.svc.cluster.local:3000"
    assert pending_endpoint([service], "ml", "cluster.local") == ""
