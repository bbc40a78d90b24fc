"""A ClipJob's status from its Job, the Job's pods and their reports (pure)."""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from typing import Any

from ..constants import Obj
from ..redact import redact
from ..status import condition, merge_conditions, pod_problems
from .job import CONTAINER
from .progress import Progress, parse_indexes, pod_index, terminated

PENDING, RUNNING, SUCCEEDED, FAILED = "Pending", "Running", "Succeeded", "Failed"


def _seconds(start: str, now: str) -> float:
    parse = datetime.datetime.fromisoformat
    return (parse(now.replace("Z", "+00:00")) - parse(start.replace("Z", "+00:00"))).total_seconds()


def eta_seconds(progress: Progress, start: str, now: str) -> int | None:
    """Seconds left at the pace so far (shards published per second since the Job started)."""
    if not start or not progress.shards_total or not progress.shards_done:
        return None
    pace = _seconds(start, now) / progress.shards_done
    return max(0, round(pace * (progress.shards_total - progress.shards_done)))


def duration(seconds: int) -> str:
    """90 -> 1m30s, as kubectl writes ages."""
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


def pods_words(pods: Iterable[Obj]) -> list[str]:
    """The failed pods' own last words (termination message: the CLI's error, or its log
    tail), each with its index, oldest first."""
    out: list[str] = []
    for pod in sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp") or ""):
        done = terminated(pod, CONTAINER)
        if not done.get("exitCode"):
            continue
        lines = [ln.strip() for ln in str(done.get("message") or "").splitlines() if ln.strip()]
        words = lines[-1] if lines else done.get("reason") or f"exit code {done['exitCode']}"
        line = f"index {pod_index(pod)}: {words}"
        if line not in out:
            out.append(line)
    return out


def _job_condition(job: Obj | None, type_: str) -> Obj:
    for cond in (job or {}).get("status", {}).get("conditions") or []:
        if cond.get("type") == type_ and cond.get("status") == "True":
            return dict(cond)
    return {}


def _phase(job: Obj | None, pods: list[Obj]) -> str:
    if _job_condition(job, "Failed"):
        return FAILED
    if _job_condition(job, "Complete"):
        return SUCCEEDED
    active = ((job or {}).get("status") or {}).get("active")
    if active and any((p.get("status") or {}).get("phase") == RUNNING for p in pods):
        return RUNNING
    return PENDING


def _conditions(
    job: Obj | None, pods: list[Obj], phase: str, done: str, generation: int
) -> list[dict[str, Any]]:
    """Complete (`done` says how far), Failed with the pods' words, PodsReady while they
    cannot start."""
    complete, failed = _job_condition(job, "Complete"), _job_condition(job, "Failed")
    words = pods_words(pods)
    reason = "AllShardsEmbedded" if complete else phase
    conds = [condition("Complete", bool(complete), reason, done, generation)]
    if failed:
        why = "; ".join(words) or failed.get("message") or failed.get("reason", "")
        conds.append(condition("Failed", True, failed.get("reason") or "Failed", why, generation))
    elif words:  # a pod failed and its index is retried (backoffLimitPerIndex)
        conds.append(condition("Failed", False, "Retrying", "; ".join(words), generation))
    else:
        conds.append(condition("Failed", False, "NoFailure", "no pod failed", generation))
    problems = pod_problems(pods, "") if phase == PENDING and job is not None else []
    if problems:
        message = "; ".join(m for _, m in problems)
        conds.append(condition("PodsReady", False, problems[0][0], message, generation))
    return conds


def compute_status(
    *,
    generation: int,
    model: str,
    job: Obj | None,
    pods: Iterable[Obj],
    progress: Progress,
    previous: Mapping[str, Any] | None,
    now: str,
    waiting: str = "",
    slice_progress: list[dict[str, int]] | None = None,
    space: str = "",
) -> dict[str, Any]:
    """The ClipJob's status; `waiting` says why no Job exists yet (its model source),
    `slice_progress` each slice's counts (progress.slices), `space` the embedding space its
    pods said (progress.space_of; kept once seen)."""
    pods = list(pods)
    job_status = (job or {}).get("status") or {}
    phase = _phase(job, pods)
    completions = int(((job or {}).get("spec") or {}).get("completions") or 0)
    slices_done = len(parse_indexes(job_status.get("completedIndexes")))
    # once every slice is done, what they published is the whole (no start line may be seen)
    total = progress.shards_total or (progress.shards_done if phase == SUCCEEDED else 0)
    shards = f"{progress.shards_done}/{total or '?'} shards"
    if total:
        shards += f" ({100 * progress.shards_done // total}%)"
    done = waiting
    if job:
        done = (
            f"{progress.items_done} items ({progress.items_failed} failed) in {shards}; "
            f"{slices_done}/{completions} slices done"
        )
    start = job_status.get("startTime") or ""
    eta = eta_seconds(progress, start, now) if phase == RUNNING else None
    failed = _job_condition(job, "Failed")
    conds = _conditions(job, pods, phase, done, generation)
    return {
        "observedGeneration": generation,
        "phase": phase,
        "model": redact(model),
        "space": space or (previous or {}).get("space") or "",
        "job": ((job or {}).get("metadata") or {}).get("name", ""),
        "shardsDone": progress.shards_done,
        "shardsTotal": total,
        "slicesDone": slices_done,
        "slices": completions,
        "itemsDone": progress.items_done,
        "itemsFailed": progress.items_failed,
        "itemsPerSecond": round(progress.items_per_s, 1),
        "sliceProgress": slice_progress or [],
        "etaSeconds": eta,
        "progress": shards if job else phase,
        "rate": f"{progress.items_per_s:.1f} items/s"
        + (f", ETA {duration(eta)}" if eta is not None else ""),
        "startTime": start or None,
        "completionTime": job_status.get("completionTime") or failed.get("lastTransitionTime"),
        "conditions": merge_conditions((previous or {}).get("conditions") or [], conds, now),
    }


def transitions(
    previous: Mapping[str, Any] | None, current: Mapping[str, Any]
) -> list[tuple[str, str, str]]:
    """(type, reason, message) of events worth posting: completion, failure, a failed pod."""
    before = {c["type"]: c for c in (previous or {}).get("conditions") or []}
    out: list[tuple[str, str, str]] = []
    for cond in current.get("conditions") or []:
        old = before.get(cond["type"]) or {}
        if cond["type"] == "Complete" and cond["status"] == "True" and old.get("status") != "True":
            out.append(("Normal", "Completed", cond["message"]))
        elif cond["type"] == "Failed" and cond["reason"] != "NoFailure":
            if (old.get("status"), old.get("message")) != (cond["status"], cond["message"]):
                out.append(("Warning", cond["reason"], cond["message"]))
        elif cond["type"] == "PodsReady" and old.get("message") != cond["message"]:
            out.append(("Warning", cond["reason"], cond["message"]))
    return out
