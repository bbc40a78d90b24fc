"""Blue/green slot state machine: which model runs in which slot, and when the Service moves."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

SLOTS = ("blue", "green")
BLUE_GREEN = "BlueGreen"
ROLLING = "Rolling"


def other_slot(slot: str) -> str:
    """The slot a swap starts the new model in."""
    return SLOTS[1] if slot == SLOTS[0] else SLOTS[0]


@dataclass(frozen=True)
class SwapState:
    """Where models run; persisted in the ClipService status so a restart resumes a swap."""

    active_slot: str
    active_model: str
    pending_slot: str = ""
    pending_model: str = ""

    @property
    def swapping(self) -> bool:
        """True while a model change is rolling out."""
        return bool(self.pending_model)

    @property
    def blue_green(self) -> bool:
        """True while the new model runs in its own slot beside the serving one."""
        return self.swapping and self.pending_slot != self.active_slot

    def serving_model(self) -> str:
        """Model rendered into the active slot (Rolling updates that slot in place)."""
        return self.pending_model if self.swapping and not self.blue_green else self.active_model

    @classmethod
    def from_status(cls, status: Mapping[str, Any] | None) -> SwapState | None:
        """Read the persisted state; None before the first reconcile."""
        status = status or {}
        slot, model = status.get("activeSlot"), status.get("activeModel")
        if slot not in SLOTS or not model:
            return None
        return cls(
            active_slot=slot,
            active_model=model,
            pending_slot=status.get("pendingSlot") or "",
            pending_model=status.get("pendingModel") or "",
        )

    def to_status(self) -> dict[str, str]:
        """Fields of the status that persist this state."""
        return {
            "activeSlot": self.active_slot,
            "activeModel": self.active_model,
            "pendingSlot": self.pending_slot,
            "pendingModel": self.pending_model,
        }


def next_state(
    desired_model: str, strategy: str, current: SwapState | None, pending_ready: bool
) -> SwapState:
    """Advance the swap one step; `pending_ready` says the pending slot fully runs desired_model."""
    if current is None:
        return SwapState(active_slot=SLOTS[0], active_model=desired_model)
    if desired_model == current.active_model:
        # No swap, or a swap reverted before it finished: drop the pending slot.
        return SwapState(active_slot=current.active_slot, active_model=current.active_model)
    target = current.active_slot if strategy == ROLLING else other_slot(current.active_slot)
    if pending_ready:
        return SwapState(active_slot=target, active_model=desired_model)
    return SwapState(
        active_slot=current.active_slot,
        active_model=current.active_model,
        pending_slot=target,
        pending_model=desired_model,
    )


def rolled_out(deployment: Mapping[str, Any] | None, model: str, model_annotation: str) -> bool:
    """True when every pod of the Deployment runs `model`, is up to date and ready."""
    if not deployment:
        return False
    meta = deployment.get("metadata", {})
    annotations = meta.get("annotations") or {}
    template_annotations = (
        deployment.get("spec", {}).get("template", {}).get("metadata", {}).get("annotations") or {}
    )
    if model not in (annotations.get(model_annotation), template_annotations.get(model_annotation)):
        return False
    status = deployment.get("status") or {}
    if status.get("observedGeneration", 0) < meta.get("generation", 1):
        return False
    want = deployment.get("spec", {}).get("replicas", 1)
    # replicas == want also means no pod of an older ReplicaSet is left.
    return all(
        status.get(key, 0) == want
        for key in ("replicas", "updatedReplicas", "readyReplicas", "availableReplicas")
    )
