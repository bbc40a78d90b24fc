"""One reconcile of a ClipJob: find its model's server pod, create its Job once, report progress.

The Job is created once and never edited (a Job's pod template is immutable, and the model it
embeds with must not change under it); a ClipJob that finished is never started again, even
when its Job is deleted. Deleting the ClipJob deletes the Job and its pods (owner reference),
never the output.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from typing import Any, cast

import kopf

from ..apply import patch_status
from ..constants import (
    API_VERSION,
    CLIPJOB_LABEL,
    JOB_KIND,
    JOB_PLURAL,
    KIND,
    MODEL_ANNOTATION,
    Obj,
)
from ..errors import ApiError, InvalidSpec, TransientError, as_reconcile_error
from ..reconcile import Context, deployment_name, now
from ..render import chart_values, helm_template
from .job import CONTAINER, embed_job, job_name
from .progress import collect, progress_of, slices, space_of
from .status import FAILED, SUCCEEDED, compute_status, transitions

logger = logging.getLogger("clipserve_operator")
PROGRESS_EVERY_S = 5.0  # how often a running ClipJob's progress (in its pods' logs) is read
WAIT_EVERY_S = 10.0  # how often a ClipJob waiting for its model's slot looks again
LOG_LINES = 5000  # a running pod's last shard events (one line per published shard)


class Waiting(Exception):
    """The model source is not there yet (no pending model, a slot still starting)."""


async def _from_clipservice(ctx: Context, clipjob: Obj) -> tuple[str, Obj]:
    """(model, Deployment) of the ClipService slot spec.modelFrom names."""
    namespace = clipjob["metadata"]["namespace"]
    source = clipjob["spec"]["modelFrom"]
    name, which = source["clipService"], source.get("slot", "active")
    service = await ctx.client.get(API_VERSION, KIND, namespace, name)
    if service is None:
        raise Waiting(f"ClipService {name} does not exist")
    status = service.get("status") or {}
    slot, model = status.get(f"{which}Slot"), status.get(f"{which}Model")
    if not slot or not model:
        raise Waiting(f"ClipService {name} has no {which} model (patch its spec.model first)")
    if which == "pending" and slot == status.get("activeSlot"):
        raise InvalidSpec(
            f"ClipService {name} swaps Rolling: its pending model has no slot of its own"
        )
    deployment = await ctx.client.get(
        "apps/v1", "Deployment", namespace, deployment_name(name, slot)
    )
    template = ((deployment or {}).get("spec") or {}).get("template") or {}
    if (template.get("metadata") or {}).get("annotations", {}).get(MODEL_ANNOTATION) != model:
        raise Waiting(f"ClipService {name}'s {which} slot {slot} does not run {model} yet")
    return model, cast(Obj, deployment)


async def _rendered(ctx: Context, clipjob: Obj) -> tuple[str, Obj]:
    """(model, Deployment) the clipserve chart renders for spec.model and the ClipJob's fields."""
    meta, spec = clipjob["metadata"], clipjob["spec"]
    model = spec["model"]
    values = chart_values(meta["name"], spec, model=model, slot="blue", service_slot="blue")
    rendered = await asyncio.to_thread(
        helm_template,
        ctx.settings.helm,
        ctx.settings.chart,
        meta["name"],
        meta["namespace"],
        values,
    )
    return model, next(o for o in rendered if o["kind"] == "Deployment")


async def _create(ctx: Context, clipjob: Obj) -> Obj:
    """Create the ClipJob's Job from its model's server pod."""
    spec = clipjob["spec"]
    model, deployment = await (
        _from_clipservice(ctx, clipjob) if spec.get("modelFrom") else _rendered(ctx, clipjob)
    )
    job = embed_job(clipjob, deployment, model)
    path = await ctx.client.path("batch/v1", "Job", clipjob["metadata"]["namespace"])
    assert path is not None
    try:
        created = await ctx.client.request("POST", path, json=job)
    except ApiError as exc:
        if exc.status != 409:
            raise
        return await _existing(ctx, clipjob)  # created by a pass that crashed before its status
    logger.info(
        "%s: created Job %s with %s",
        clipjob["metadata"]["name"],
        job_name(clipjob["metadata"]["name"]),
        model,
    )
    return cast(Obj, created)


async def _existing(ctx: Context, clipjob: Obj) -> Obj:
    meta = clipjob["metadata"]
    found = await ctx.client.get("batch/v1", "Job", meta["namespace"], job_name(meta["name"]))
    if found is None:
        raise TransientError("the Job vanished while it was created", ctx.settings.retry_delay_s)
    return found


async def _logs(ctx: Context, namespace: str, pods: list[Obj], finished: bool) -> dict[str, str]:
    """The pods' logs (their shard events and summary): the running ones', and until the
    ClipJob has finished (`finished`), the finished ones' too (read in the pass that sees them
    finish; kept in the status from then on)."""
    out = {}
    for pod in pods:
        phase = (pod.get("status") or {}).get("phase")
        if phase == "Running" or (not finished and phase in ("Succeeded", "Failed")):
            name = pod["metadata"]["name"]
            out[name] = await ctx.client.log_tail(namespace, name, CONTAINER, LOG_LINES)
    return out


def _owned(job: Mapping[str, Any], uid: str) -> bool:
    return any(r.get("uid") == uid for r in job["metadata"].get("ownerReferences") or [])


async def reconcile_clipjob(ctx: Context, namespace: str, name: str) -> None:
    """Create a ClipJob's Job once, then report its progress until it finishes."""
    clipjob = await ctx.client.get(API_VERSION, JOB_KIND, namespace, name)
    if clipjob is None or clipjob["metadata"].get("deletionTimestamp"):
        return  # the garbage collector removes the Job and its pods
    meta, before = clipjob["metadata"], clipjob.get("status") or {}
    job = await ctx.client.get("batch/v1", "Job", namespace, job_name(name))
    waiting, failure = "", None
    if job is not None and not _owned(job, meta["uid"]):
        waiting, job = f"a Job named {job_name(name)} exists and is not this ClipJob's", None
    elif job is None and before.get("phase") not in (SUCCEEDED, FAILED):
        try:
            job = await _create(ctx, clipjob)
        except Waiting as exc:
            waiting = str(exc)
        except Exception as exc:
            failure = as_reconcile_error(exc, ctx.settings.retry_delay_s)
            if isinstance(failure, TransientError):
                raise failure from exc
            waiting = f"{failure.reason}: {failure}"
    model = ((job or {}).get("metadata") or {}).get("annotations", {}).get(MODEL_ANNOTATION, "")
    pods = await ctx.client.list("v1", "Pod", namespace, f"{CLIPJOB_LABEL}={name}") if job else []
    finished = before.get("phase") in (SUCCEEDED, FAILED)
    indexes, total = collect(pods, await _logs(ctx, namespace, pods, finished), CONTAINER)
    status = compute_status(
        generation=meta["generation"],
        model=model or before.get("model") or "",
        job=job,
        pods=pods,
        progress=progress_of(indexes, total, before.get("sliceProgress") or ()),
        slice_progress=slices(indexes, before.get("sliceProgress") or ()),
        previous=before,
        now=now(),
        waiting=waiting,
        space=space_of(indexes),
    )
    if finished:
        return  # what it published was counted when it finished; its pods may be gone since
    if status != {k: before.get(k) for k in status}:
        await patch_status(
            ctx.client,
            namespace,
            name,
            status,
            retry_delay=ctx.settings.retry_delay_s,
            plural=JOB_PLURAL,
        )
    for type_, reason, message in transitions(before, status):
        kopf.event(
            kopf.Body(cast(kopf.RawBody, clipjob)), type=type_, reason=reason, message=message
        )
    if status["phase"] not in (SUCCEEDED, FAILED) and ctx.requeue_jobs:
        # Progress is in the pods' logs, which send no event; a waiting source none either.
        ctx.requeue_jobs(namespace, name, PROGRESS_EVERY_S if job else WAIT_EVERY_S)
    if failure is not None:
        raise failure
