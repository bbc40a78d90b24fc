"""When a blue/green swap may move the Service: spec.swap.promotion Automatic or Manual (pure).

Automatic (the default) moves it once the new slot is ready. Manual holds it there, the old
slot serving everything and the new one reachable alone through status.pendingEndpoint, until
the user names the pending model in spec.swap.promote, or a ClipJob that declares
spec.promotes.clipService for this ClipService completes with the pending model: the stored
vectors are then in the new space, and the Service may follow. A failed ClipJob never promotes,
nor does one whose embedding space (its pods' digest) differs from the pending slot's: the same
spec can load other weights when a hub tag moved between the two loads.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .constants import Obj

AUTOMATIC, MANUAL = "Automatic", "Manual"


def promotion_mode(spec: Mapping[str, Any]) -> str:
    """spec.swap.promotion (Automatic when unset)."""
    return str((spec.get("swap") or {}).get("promotion") or AUTOMATIC)


def promoting_jobs(clipjobs: Iterable[Obj], clipservice: str, model: str) -> list[Obj]:
    """The ClipJobs that declare they re-embed for `clipservice` and ran (or run) `model`."""
    return [
        j
        for j in clipjobs
        if ((j.get("spec") or {}).get("promotes") or {}).get("clipService") == clipservice
        and (j.get("status") or {}).get("model") == model
    ]


@dataclass(frozen=True)
class Decision:
    """Whether the pending slot may take the traffic, and the PromotionHeld condition's words."""

    promote: bool
    reason: str
    message: str


def decide(
    spec: Mapping[str, Any],
    name: str,
    pending_model: str,
    clipjobs: Iterable[Obj],
    pending_space: str = "",
) -> Decision:
    """Decide for a swap whose pending slot is ready; `pending_space` is its pods' space digest
    (status.pendingSpace; "" while not read yet: then the model spec alone is compared)."""
    if promotion_mode(spec) != MANUAL:
        return Decision(True, "Automatic", "the Service moves once the new slot is ready")
    if (spec.get("swap") or {}).get("promote") == pending_model:
        return Decision(True, "Promoted", f"spec.swap.promote names {pending_model}")
    jobs = promoting_jobs(clipjobs, name, pending_model)
    done = [j for j in jobs if (j.get("status") or {}).get("phase") == "Succeeded"]
    elsewhere = [j for j in done if not _same_space(j, pending_space)]
    done = [j for j in done if j not in elsewhere]
    if elsewhere and not done:
        job = elsewhere[0]
        return Decision(
            False,
            "ClipJobOtherSpace",
            f"ClipJob {job['metadata']['name']} re-embedded in space {job['status']['space']}, "
            f"the pending slot serves {pending_space} (other weights under {pending_model}): "
            "its vectors would not match the new model's; not promoting, run it again",
        )
    if done:
        return Decision(
            True,
            "ClipJobComplete",
            f"ClipJob {done[0]['metadata']['name']} re-embedded with {pending_model}",
        )
    failed = [j for j in jobs if (j.get("status") or {}).get("phase") == "Failed"]
    running = [j for j in jobs if j not in failed]
    if running:
        job = running[0]
        progress = (job.get("status") or {}).get("progress") or "starting"
        return Decision(
            False,
            "ClipJobRunning",
            f"held until ClipJob {job['metadata']['name']} completes ({progress})",
        )
    if failed:
        words = "; ".join(
            f"ClipJob {j['metadata']['name']} failed: {_failed_words(j)}" for j in failed
        )
        return Decision(False, "ClipJobFailed", f"{words}; not promoting {pending_model}")
    return Decision(
        False,
        "AwaitingPromotion",
        f"{pending_model} is ready beside the serving model; set spec.swap.promote to it, or "
        "run a ClipJob with spec.promotes.clipService naming this ClipService",
    )


def _same_space(clipjob: Obj, pending_space: str) -> bool:
    """True unless both spaces are known and differ."""
    space = (clipjob.get("status") or {}).get("space") or ""
    return not (space and pending_space) or space == pending_space


def _failed_words(clipjob: Obj) -> str:
    for cond in (clipjob.get("status") or {}).get("conditions") or []:
        if cond.get("type") == "Failed" and cond.get("status") == "True":
            return str(cond.get("message") or cond.get("reason") or "")
    return "failed"


def pending_service(service: Mapping[str, Any], pending_slot: str, slot_label: str) -> Obj:
    """A Service like the serving one that selects only the pending slot's pods (status.
    pendingEndpoint): a held model can be tried, and re-embedded, before clients see it."""
    meta = service["metadata"]
    selector = dict(service["spec"].get("selector") or {})
    selector[slot_label] = pending_slot
    spec = {
        k: v
        for k, v in service["spec"].items()
        if k not in ("clusterIP", "clusterIPs", "selector", "type", "loadBalancerIP")
    }
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": f"{meta['name'][:55]}-pending",
            "labels": dict(meta.get("labels") or {}),
        },
        "spec": {**spec, "type": "ClusterIP", "selector": selector},
    }
