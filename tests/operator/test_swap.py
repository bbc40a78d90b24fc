"""Blue/green state machine: the Service moves only to a slot that fully runs the new model."""

from __future__ import annotations

from typing import Any

from clipserve_operator.constants import MODEL_ANNOTATION
from clipserve_operator.swap import SwapState, next_state, rolled_out

A, B, C = "ViT-B-32:openai", "ViT-L-14:openai", "ViT-H-14:laion2b_s32b_b79k"


def test_first_reconcile_serves_the_model_from_blue() -> None:
    assert next_state(A, "BlueGreen", None, pending_ready=False) == SwapState("blue", A)


def test_model_change_starts_the_other_slot_and_keeps_serving_the_old() -> None:
    state = next_state(B, "BlueGreen", SwapState("blue", A), pending_ready=False)
    assert state == SwapState("blue", A, "green", B)
    assert state.blue_green and state.serving_model() == A


def test_swap_promotes_only_when_the_new_slot_is_ready() -> None:
    swapping = SwapState("blue", A, "green", B)
    assert next_state(B, "BlueGreen", swapping, pending_ready=False) == swapping
    assert next_state(B, "BlueGreen", swapping, pending_ready=True) == SwapState("green", B)


def test_second_change_during_a_swap_reuses_the_pending_slot() -> None:
    state = next_state(C, "BlueGreen", SwapState("blue", A, "green", B), pending_ready=False)
    assert state == SwapState("blue", A, "green", C)


def test_reverting_during_a_swap_drops_the_pending_slot() -> None:
    state = next_state(A, "BlueGreen", SwapState("blue", A, "green", B), pending_ready=True)
    assert state == SwapState("blue", A)


def test_rolling_updates_the_active_slot_in_place() -> None:
    state = next_state(B, "Rolling", SwapState("green", A), pending_ready=False)
    assert state == SwapState("green", A, "green", B)
    assert not state.blue_green and state.serving_model() == B
    assert next_state(B, "Rolling", state, pending_ready=True) == SwapState("green", B)


def test_state_round_trips_through_status() -> None:
    state = SwapState("green", B, "blue", C)
    assert SwapState.from_status(state.to_status()) == state
    assert SwapState.from_status({}) is None
    assert SwapState.from_status({"activeSlot": "purple", "activeModel": A}) is None


def _deployment(model: str, want: int, ready: int, updated: int | None = None, **extra: Any):
    status = {
        "observedGeneration": 2,
        "replicas": want,
        "readyReplicas": ready,
        "availableReplicas": ready,
        "updatedReplicas": want if updated is None else updated,
    }
    status.update(extra)
    return {
        "metadata": {"generation": 2, "annotations": {MODEL_ANNOTATION: model}},
        "spec": {"replicas": want},
        "status": status,
    }


def test_rolled_out_needs_every_pod_ready_and_up_to_date() -> None:
    assert rolled_out(_deployment(B, 2, 2), B, MODEL_ANNOTATION)
    assert not rolled_out(_deployment(B, 2, 1), B, MODEL_ANNOTATION)
    assert not rolled_out(_deployment(B, 2, 2, updated=1), B, MODEL_ANNOTATION)
    # Ready pods of an older model (a second change mid-swap) do not count.
    assert not rolled_out(_deployment(B, 2, 2), C, MODEL_ANNOTATION)
    # The controller has not seen the latest spec yet.
    assert not rolled_out(_deployment(B, 2, 2, observedGeneration=1), B, MODEL_ANNOTATION)
    assert not rolled_out(None, B, MODEL_ANNOTATION)
