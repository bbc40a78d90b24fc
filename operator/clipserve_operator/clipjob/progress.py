"""How far a ClipJob is, from what its pods print and leave behind (pure).

Sources, least privileged first: the Job's own status (which indexes completed or failed); a
finished pod's termination message, which the kubelet keeps in the pod status (`clipserve
embed` writes its slice's summary there, counting the shards earlier pods of the index
published); and a running pod's log, one JSON line per published shard (`pods/log` get, which
the operator already holds for the prefetch Jobs). A pod deleted before it finished leaves
neither: its shards count again once the index's next pod finishes and reports its summary.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from ..constants import Obj

INDEX_ANNOTATION = "batch.kubernetes.io/job-completion-index"


@dataclass(frozen=True)
class Shard:
    """One published shard, as its `{"event": "shard", ...}` line says."""

    items: int
    failed: int


@dataclass
class IndexProgress:
    """What one index (one slice of the shards) has published, over all its pods."""

    shards: dict[int, Shard] = field(default_factory=dict)
    summary: Mapping[str, Any] | None = None  # the `done` event of its pod that succeeded
    rate: float = 0.0  # items/s of its running pod's last shard

    def totals(self) -> tuple[int, int, int]:
        """(shards, items, failed items): the summary once there is one, else the log's sum."""
        if self.summary is not None:
            s = self.summary
            return int(s.get("shards", 0)), int(s.get("items", 0)), int(s.get("failed", 0))
        items = sum(s.items for s in self.shards.values())
        return len(self.shards), items, sum(s.failed for s in self.shards.values())


def events(text: str) -> list[dict[str, Any]]:
    """The JSON event lines of `clipserve embed` in a log or termination message; other lines
    (warnings, a progress bar) are skipped."""
    out = []
    for line in text.splitlines():
        line = line.strip()
        if not line.startswith("{"):
            continue
        try:
            found = json.loads(line)
        except ValueError:
            continue
        if isinstance(found, dict) and isinstance(found.get("event"), str):
            out.append(found)
    return out


def pod_index(pod: Mapping[str, Any]) -> int | None:
    """The completion index a pod of an Indexed Job runs."""
    meta = pod.get("metadata") or {}
    raw = (meta.get("annotations") or {}).get(INDEX_ANNOTATION) or (meta.get("labels") or {}).get(
        INDEX_ANNOTATION
    )
    return int(raw) if raw is not None and str(raw).isdigit() else None


def terminated(pod: Mapping[str, Any], container: str) -> Obj:
    """The `terminated` state of a pod's container, or {}."""
    for cs in (pod.get("status") or {}).get("containerStatuses") or []:
        if cs.get("name") == container:
            return dict((cs.get("state") or {}).get("terminated") or {})
    return {}


def parse_indexes(text: str | None) -> set[int]:
    """A Job's completedIndexes / failedIndexes ("0-2,5") as a set."""
    out: set[int] = set()
    for part in (text or "").split(","):
        if not part.strip():
            continue
        first, _, last = part.partition("-")
        out.update(range(int(first), int(last or first) + 1))
    return out


@dataclass(frozen=True)
class Progress:
    """A ClipJob's progress over every index."""

    shards_done: int
    shards_total: int  # 0 while no pod has said how many there are
    items_done: int
    items_failed: int
    items_per_s: float


def collect(
    pods: Iterable[Obj], logs: Mapping[str, str], container: str
) -> tuple[dict[int, IndexProgress], int]:
    """Per index what its pods published ({pod name: log} for the running ones), and the run's
    shard total if any event named it."""
    indexes: dict[int, IndexProgress] = {}
    total = 0
    for pod in sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp") or ""):
        index = pod_index(pod)
        if index is None:
            continue
        progress = indexes.setdefault(index, IndexProgress())
        done = terminated(pod, container)
        found = events(logs.get(pod["metadata"]["name"], ""))
        if done.get("exitCode") == 0:
            found += events(str(done.get("message") or ""))
        running = (pod.get("status") or {}).get("phase") == "Running"
        for event in found:
            total = max(total, int(event.get("total_shards") or 0))
            if event["event"] == "shard" and "shard" in event:
                progress.shards[int(event["shard"])] = Shard(
                    int(event.get("items", 0)), int(event.get("failed", 0))
                )
                if running:
                    progress.rate = float(event.get("items_per_s") or 0.0)
            elif event["event"] == "done" and done.get("exitCode") == 0:
                progress.summary = event
        if not running:
            progress.rate = 0.0
    return indexes, total


def progress_of(indexes: Mapping[int, IndexProgress], total: int) -> Progress:
    """The sums over indexes."""
    shards = items = failed = 0
    for index in indexes.values():
        s, i, f = index.totals()
        shards, items, failed = shards + s, items + i, failed + f
    rate = sum(index.rate for index in indexes.values())
    return Progress(shards, max(total, shards) if total else 0, items, failed, rate)
