"""How far a ClipJob is, from what its pods print and leave behind (pure).

Sources, least privileged first: the Job's own status (which indexes completed or failed); a
finished pod's termination message, which the kubelet keeps in the pod status; and the pods'
logs: `clipserve embed --progress lines` prints a `start` line (the run's total_shards), one
line per published shard and a `done` summary of its slice (shards it published, and `skipped`:
published before it), read with `pods/log` get, which the operator already holds for the
prefetch Jobs. The shard count is exact once an index's pod finished (its summary); items
count from the shard lines seen, so a pod deleted before its log was read leaves its shards'
items uncounted (its shards still count, as the next pod's `skipped`), unless the `done` line
carries `skipped_items` / `skipped_failed` (the skipped shards' manifests), which make a finished
slice's counts exact.
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
    summary_pod: str = ""
    by_pod: dict[str, set[int]] = field(default_factory=dict)  # shards each pod reported
    rate: float = 0.0  # items/s of its running pod's last shard
    space: str = ""  # the embedding space its pods' start/done lines name

    def totals(self) -> tuple[int, int, int]:
        """(shards, items, failed items). The shard lines seen, by shard; once the index's pod
        succeeded, its summary says how many shards the slice holds (`shards` it published and
        `skipped`, published before it) and adds what it published that no line was seen of."""
        items = sum(s.items for s in self.shards.values())
        failed = sum(s.failed for s in self.shards.values())
        if self.summary is None:
            return len(self.shards), items, failed
        s = self.summary
        if "skipped_items" in s:  # the slice's own totals, skipped shards' from their manifests
            items = int(s.get("items", 0)) + int(s["skipped_items"])
            failed = int(s.get("failed", 0)) + int(s.get("skipped_failed", 0))
            return int(s.get("shards", 0)) + int(s.get("skipped", 0)), items, failed
        seen = [self.shards[k] for k in self.by_pod.get(self.summary_pod, ())]
        items += max(0, int(s.get("items", 0)) - sum(x.items for x in seen))
        failed += max(0, int(s.get("failed", 0)) - sum(x.failed for x in seen))
        return int(s.get("shards", 0)) + int(s.get("skipped", 0)), items, failed


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
    """Per index what its pods published ({pod name: log} for those whose log was read), and
    the run's shard total once a pod has said it (its `start` line)."""
    indexes: dict[int, IndexProgress] = {}
    total = 0
    for pod in sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp") or ""):
        index = pod_index(pod)
        if index is None:
            continue
        name = pod["metadata"]["name"]
        progress = indexes.setdefault(index, IndexProgress())
        done = terminated(pod, container)
        found = events(logs.get(name, ""))
        if done.get("exitCode") == 0:
            found += events(str(done.get("message") or ""))
        running = (pod.get("status") or {}).get("phase") == "Running"
        for event in found:
            total = max(total, int(event.get("total_shards") or 0))
            if isinstance(event.get("space"), str) and event["space"]:
                progress.space = event["space"]
            if event["event"] == "shard" and "shard" in event:
                shard = int(event["shard"])
                progress.shards[shard] = Shard(
                    int(event.get("items", 0)), int(event.get("failed", 0))
                )
                progress.by_pod.setdefault(name, set()).add(shard)
                if running:
                    progress.rate = float(event.get("items_per_s") or 0.0)
            elif event["event"] == "done" and done.get("exitCode") == 0:
                progress.summary, progress.summary_pod = event, name
        if not running and progress.summary is not None:
            progress.rate = 0.0
    return indexes, total


def space_of(indexes: Mapping[int, IndexProgress]) -> str:
    """The embedding space the pods say they embed in (`clipserve embed`'s `start` and `done`
    lines carry its digest), "" until one has said it. run.json makes every slice of one
    output agree, so the first found is the job's."""
    return next((p.space for p in indexes.values() if p.space), "")


def slices(
    indexes: Mapping[int, IndexProgress], previous: Iterable[Mapping[str, Any]] = ()
) -> list[dict[str, int]]:
    """Each slice's (index's) counts for status.sliceProgress: what its pods say now, or what
    was seen before when that was more (a slice's published shards never decrease, but a pod
    deleted, a log rotated or a kubelet out of reach take lines out of a later reading)."""
    out = {int(p["index"]): (int(p["shards"]), int(p["items"]), int(p["failed"])) for p in previous}
    for index, progress in indexes.items():
        out[index] = max(out.get(index, (0, 0, 0)), progress.totals())
    return [
        {"index": k, "shards": s, "items": i, "failed": f} for k, (s, i, f) in sorted(out.items())
    ]


def progress_of(
    indexes: Mapping[int, IndexProgress],
    total: int,
    previous: Iterable[Mapping[str, Any]] = (),
) -> Progress:
    """The sums over slices (status.sliceProgress `previous` filling what a reading lost)."""
    per_slice = slices(indexes, previous)
    shards = sum(p["shards"] for p in per_slice)
    items = sum(p["items"] for p in per_slice)
    failed = sum(p["failed"] for p in per_slice)
    rate = sum(index.rate for index in indexes.values())
    return Progress(shards, max(total, shards) if total else 0, items, failed, rate)
