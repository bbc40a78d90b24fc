"""Which embedding space each slot serves: the digest its server pods logged at start-up.

A server knows its space (X-Clip-Space: the weights' sha256, preprocessing, tokenizer) only
once it has loaded its weights, which it may have downloaded itself, so no init container can
report it the way `device` is reported (status.device). It logs one line then
(`<spec>: embedding space sha256:<hex> (weights ...)`, models/load.py); the operator reads the
head of each ready server pod's log once, through the `pods/log` it already holds for prefetch
progress, and keeps the answer by pod uid. No API token in the pods, no network path from the
operator to them.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from .constants import Obj
from .errors import ApiError
from .kube import KubeClient

logger = logging.getLogger("clipserve_operator")
SERVER_CONTAINER = "clipserve"  # the chart's server container (server-deployment.yaml)
# The line comes right after the model loads, before the pod is ready: well inside this.
HEAD_BYTES = 64 * 1024
READ_TIMEOUT_S = 5.0  # a log read holds up its ClipService's reconcile
RETRY_S = 300.0  # after a log could not be read
_SPACE_LINE = re.compile(r": embedding space ((?:sha256|random):[0-9a-f]{64}) ")


def reported_space(log_head: str) -> str:
    """The digest a server logged for its model, or "" (not in this part of the log)."""
    found = _SPACE_LINE.search(log_head)
    return found.group(1) if found else ""


def _live(pod: Obj) -> bool:
    return not pod.get("metadata", {}).get("deletionTimestamp")


def _ready(pod: Obj) -> bool:
    conditions = (pod.get("status") or {}).get("conditions") or []
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in conditions)


def slot_space(pods: Iterable[Obj], spaces: Mapping[str, str], slot_label: str, slot: str) -> str:
    """The space the slot's pods reported ("" until one has; comma-joined when they differ,
    as while a rolling swap replaces them)."""
    found = {
        spaces.get(str(pod["metadata"].get("uid", "")), "")
        for pod in pods
        if (pod["metadata"].get("labels") or {}).get(slot_label) == slot and _live(pod)
    }
    return ",".join(sorted(found - {""}))


@dataclass
class Readings:
    """One ClipService's reads so far: each server pod's space by uid, and when a pod's log
    last could not be read (monotonic seconds). Holds only the pods of its last pass."""

    spaces: dict[str, str] = field(default_factory=dict)
    failed_at: dict[str, float] = field(default_factory=dict)


async def read_spaces(
    client: KubeClient,
    namespace: str,
    pods: Iterable[Obj],
    slot_label: str,
    before: Readings,
    now: float,
) -> Readings:
    """The space of every live server pod: known ones as they were, ready ones not known yet
    from the head of their log (once: a line not found stays ""). A log that could not be read
    (a kubelet out of reach, no `pods/log`) is tried again RETRY_S later, not on every pass:
    each try can cost a reconcile up to READ_TIMEOUT_S."""
    out = Readings()
    for pod in pods:
        meta = pod["metadata"]
        uid = str(meta.get("uid", ""))
        if not (meta.get("labels") or {}).get(slot_label) or not _live(pod):
            continue
        if uid in before.spaces:
            out.spaces[uid] = before.spaces[uid]
            continue
        failed = before.failed_at.get(uid)
        if failed is not None and now - failed < RETRY_S:
            out.failed_at[uid] = failed
            continue
        if not _ready(pod):
            continue
        try:
            head = await client.log_head(
                namespace, meta["name"], SERVER_CONTAINER, HEAD_BYTES, READ_TIMEOUT_S
            )
        except ApiError as exc:
            if failed is None:  # said once per pod, not every RETRY_S
                logger.warning(
                    "%s/%s: its embedding space is unknown for now: %s",
                    namespace,
                    meta["name"],
                    exc,
                )
            out.failed_at[uid] = now
            continue
        out.spaces[uid] = reported_space(head)
    return out
