"""One reconcile of a ClipService: plan the swap, render, apply, prune, observe, report."""

from __future__ import annotations

import asyncio
import datetime
import json
import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Any, cast

import kopf

from .apply import Owned, apply_objects, patch_status, prune
from .autoscaler import scaling
from .children import WATCHED_KINDS, Children, Indexes
from .constants import (
    API_VERSION,
    JOB_KIND,
    KIND,
    MODEL_ANNOTATION,
    OWNER_LABEL,
    PLURAL,
    SLOT_LABEL,
    Obj,
)
from .errors import ApiError, ReconcileError, TransientError, as_reconcile_error
from .kube import KubeClient
from .metrics import Metrics
from .promotion import MANUAL, Decision, decide, pending_service, promotion_mode
from .render import (
    autoscaling_enabled,
    desired_objects,
    endpoint,
    helm_template,
    object_key,
    pending_endpoint,
    render_state,
)
from .settings import Settings
from .spaces import Readings, read_spaces
from .status import Observed, compute_status, degraded_status, transitions
from .swap import BLUE_GREEN, SwapState, next_state, rolled_out
from .values_policy import check_values
from .weights import (
    COMPONENT,
    COMPONENT_LABEL,
    CONTAINER,
    SHARED,
    Weights,
    cache_type,
    claim,
    prefetch_job,
    ready_models,
    weights_state,
)

logger = logging.getLogger("clipserve_operator")
_RENDER_CACHE_MAX = 256
PROGRESS_EVERY_S = 3.0  # how often a running prefetch's progress reaches the status


@dataclass
class Context:
    """What a reconcile needs: kept in kopf's memo, never in module globals."""

    client: KubeClient
    settings: Settings
    metrics: Metrics
    # kopf's indexes of the children it watches: what a reconcile reads them from.
    indexes: Indexes
    render_cache: dict[str, list[Obj]] = field(default_factory=dict)
    # What each ClipService was last pruned down to: prune lists ~10 kinds, so it runs only when
    # the rendered set changes (and once per ClipService after a start).
    pruned: dict[tuple[str, str, str], frozenset[tuple[str, str, str]]] = field(
        default_factory=dict
    )
    # Children known to be each ClipService's own (apply.Owned): read once, then applied with
    # their uid.
    owned: Owned = field(default_factory=dict)
    # Reconcile a ClipService again after a delay (the work queue's `later`), while prefetch
    # Jobs run: their progress is in a log, which sends no event.
    requeue: Callable[[str, str, float], None] | None = None
    # The same for ClipJobs (their own work queue): a running one's progress is in its logs.
    requeue_jobs: Callable[[str, str, float], None] | None = None
    # Each ClipService's server pods' embedding spaces (spaces.py): a pod's log is read once.
    spaces: dict[tuple[str, str], Readings] = field(default_factory=dict)


def deployment_name(name: str, slot: str) -> str:
    """The chart names a slot's Deployment <fullname>-<slot> (blue/green slot contract)."""
    return f"{name}-{slot}"


def _render(
    ctx: Context, namespace: str, name: str, spec: Mapping[str, Any], values: dict[str, Any]
) -> list[Obj]:
    """`helm template`, memoised by values: most reconciles render what they rendered before."""
    apis = (
        ["monitoring.coreos.com/v1"] if (spec.get("monitoring") or {}).get("serviceMonitor") else []
    )
    key = json.dumps([namespace, name, ctx.settings.chart, apis, values], sort_keys=True)
    if key not in ctx.render_cache:
        if len(ctx.render_cache) >= _RENDER_CACHE_MAX:
            ctx.render_cache.clear()
        ctx.render_cache[key] = helm_template(
            ctx.settings.helm, ctx.settings.chart, name, namespace, values, api_versions=apis
        )
    return ctx.render_cache[key]


def _selector(objects: list[Obj], deployment: str) -> str:
    """Label selector of the serving slot's pods, for the scale subresource."""
    for obj in objects:
        if obj["kind"] == "Deployment" and obj["metadata"]["name"] == deployment:
            labels = obj["spec"]["selector"].get("matchLabels") or {}
            return ",".join(f"{k}={v}" for k, v in sorted(labels.items()))
    return ""


def now() -> str:
    """The time as the API server writes it in conditions."""
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _planned(owner: Obj) -> SwapState:
    """The swap state before looking at the pending slot (a swap starts or goes on)."""
    spec = owner["spec"]
    current = SwapState.from_status(owner.get("status"))
    return next_state(spec["model"], spec.get("swapStrategy", BLUE_GREEN), current, False)


async def _promotion(ctx: Context, owner: Obj, state: SwapState) -> Decision | None:
    """With spec.swap.promotion Manual during a blue/green swap: may the Service move (the
    ClipJobs of this namespace are asked, only then)."""
    if not state.blue_green or promotion_mode(owner["spec"]) != MANUAL:
        return None
    meta = owner["metadata"]
    clipjobs = await ctx.client.list(API_VERSION, JOB_KIND, meta["namespace"], "")
    pending_space = (owner.get("status") or {}).get("pendingSpace") or ""
    return decide(owner["spec"], meta["name"], state.pending_model, clipjobs, pending_space)


async def _advance_swap(
    ctx: Context, owner: Obj, children: Children, state: SwapState, promotion: Decision | None
) -> SwapState:
    """The swap state for this reconcile; a promotion is persisted before the Service moves."""
    meta, spec = owner["metadata"], owner["spec"]
    if not state.swapping:
        return state
    current = SwapState.from_status(owner.get("status"))
    strategy = spec.get("swapStrategy", BLUE_GREEN)
    pending = children.deployments.get(deployment_name(meta["name"], state.pending_slot))
    if not rolled_out(pending, spec["model"], MODEL_ANNOTATION):
        return state
    if promotion is not None and not promotion.promote:
        return state  # Manual: the new slot waits, ready, beside the serving one
    state = next_state(spec["model"], strategy, current, pending_ready=True)
    # Written first so that a crash between here and the Service move resumes forward (the new
    # slot stays active) instead of moving clients back to the old model.
    await patch_status(
        ctx.client,
        meta["namespace"],
        meta["name"],
        state.to_status(),
        retry_delay=ctx.settings.retry_delay_s,
    )
    ctx.metrics.swaps.labels("completed").inc()
    return state


async def _desired(ctx: Context, owner: Obj, state: SwapState, *, held: bool = False) -> list[Obj]:
    """The objects for a swap state, rendered by helm and owned by the ClipService; with a
    Manual swap held (`held`), also the Service that reaches only the pending slot."""
    meta, spec = owner["metadata"], owner["spec"]
    render = partial(_render, ctx, meta["namespace"], meta["name"], spec)
    rendered = await asyncio.to_thread(render_state, render, meta["name"], spec, state)
    if held:
        rendered = rendered + [
            pending_service(s, state.pending_slot, SLOT_LABEL)
            for s in rendered
            if s["kind"] == "Service" and SLOT_LABEL in (s["spec"].get("selector") or {})
        ]
    return desired_objects(rendered, owner, autoscaling=autoscaling_enabled(spec))


def _is_prefetch(obj: Obj) -> bool:
    """A prefetch Job or its pod (weights.prefetch_job labels both)."""
    return (obj["metadata"].get("labels") or {}).get(COMPONENT_LABEL) == COMPONENT


async def _held(ctx: Context, namespace: str, slots: list[Obj], ready: set[str]) -> set[str]:
    """The slots to hold back: their model's weights are not in the cache yet and their
    Deployment does not exist (one that runs already is never taken away). Asked of the API,
    not the watched view: a slot left out here is deleted by prune, and a Deployment created
    moments ago may not have reached the index yet."""
    held = set()
    for slot in slots:
        name = slot["metadata"]["name"]
        model = slot["spec"]["template"]["metadata"]["annotations"][MODEL_ANNOTATION]
        if (
            model not in ready
            and await ctx.client.get("apps/v1", "Deployment", namespace, name) is None
        ):
            held.add(name)
    return held


async def _prefetch(
    ctx: Context, owner: Obj, state: SwapState, objects: list[Obj], children: Children
) -> tuple[list[Obj], list[Weights]]:
    """Add the shared claim and a prefetch Job per slot model; hold back each slot whose
    weights are not in the cache yet (a Rolling swap keeps the old model until they are)."""
    meta = owner["metadata"]
    namespace, name = meta["namespace"], meta["name"]
    slots = [o for o in objects if o["kind"] == "Deployment"]
    jobs = {job["metadata"]["name"]: job for job in (prefetch_job(name, d) for d in slots)}
    found = {n: j for n, j in children.jobs.items() if _is_prefetch(j)}
    pods = [p for p in children.pods if _is_prefetch(p)]
    states = []
    for job_name, job in jobs.items():
        job_pods = [
            p for p in pods if (p["metadata"].get("labels") or {}).get("job-name") == job_name
        ]
        running = [p for p in job_pods if (p.get("status") or {}).get("phase") == "Running"]
        log = ""
        if running:
            log = await ctx.client.log_tail(
                namespace, running[-1]["metadata"]["name"], CONTAINER, 5
            )
        model = job["metadata"]["annotations"][MODEL_ANNOTATION]
        states.append(weights_state(model, found.get(job_name), job_name, job_pods, log))
    ready = ready_models(states)
    if any(w.phase in ("Pending", "Downloading") for w in states) and ctx.requeue:
        ctx.requeue(namespace, name, PROGRESS_EVERY_S)  # the log, not an event, says how far
    if state.swapping and not state.blue_green and state.pending_model not in ready:
        objects = await _desired(ctx, owner, replace(state, pending_slot="", pending_model=""))
    held = await _held(ctx, namespace, slots, ready)
    kept = [o for o in objects if o["metadata"]["name"] not in held]
    extra = [c for c in (claim(name, owner["spec"]),) if c is not None] + list(jobs.values())
    return kept + desired_objects(extra, owner, autoscaling=False), states


async def _apply_and_prune(
    ctx: Context, owner: Obj, objects: list[Obj], applied: list[Obj]
) -> None:
    """Apply every object, then prune what is no longer rendered (when the set changed); each
    object applied is added to `applied` as the API server stored it, even when others fail."""
    meta, delay = owner["metadata"], ctx.settings.retry_delay_s
    await apply_objects(ctx.client, objects, retry_delay=delay, owned=ctx.owned, applied=applied)
    keys = frozenset(object_key(o) for o in objects)
    prune_key = (meta["namespace"], meta["name"], meta["uid"])
    if ctx.pruned.get(prune_key) != keys:
        deleted = await prune(ctx.client, owner, objects, retry_delay=delay)
        if deleted:
            logger.info("%s/%s: pruned %s", meta["namespace"], meta["name"], ", ".join(deleted))
        ctx.pruned[prune_key] = keys


def _observe(owner: Obj, state: SwapState, children: Children) -> Observed:
    """The serving and pending Deployments, every pod of the ClipService and the HPA scaling
    the serving one (the chart's, or KEDA's: it carries the ScaledObject's labels)."""
    meta = owner["metadata"]
    active = deployment_name(meta["name"], state.active_slot)
    hpas = children.autoscalers if autoscaling_enabled(owner["spec"]) else ()
    pending = children.deployments.get(deployment_name(meta["name"], state.pending_slot))
    return Observed(
        active=children.deployments.get(active),
        pending=pending if state.blue_green else None,
        pods=children.pods,
        autoscaler=scaling(hpas, active),
    )


def _reportable(exc: Exception, delay: float) -> ReconcileError:
    """A step's failure as the error the ClipService shows; transient ones are raised instead."""
    if isinstance(exc, ApiError) and exc.namespace_terminating:
        raise exc  # the namespace and the ClipService are going away
    error = as_reconcile_error(exc, delay)
    if isinstance(error, TransientError):
        raise error from (None if error is exc else exc)
    return error


async def _report(
    ctx: Context,
    owner: Obj,
    state: SwapState,
    objects: list[Obj],
    children: Children,
    failure: ReconcileError | None,
    weights: list[Weights],
    promotion: Decision | None = None,
) -> ReconcileError | None:
    """Write the status computed from the pass's view of the children, post events for its
    transitions; returns the failure to raise (should observing fail, a bug now that it reads
    no API, only Degraded is updated)."""
    meta, before = owner["metadata"], owner.get("status") or {}
    namespace, name, stamp = meta["namespace"], meta["name"], now()
    before_reads = ctx.spaces.get((namespace, name), Readings())
    reads = await read_spaces(
        ctx.client, namespace, children.pods, SLOT_LABEL, before_reads, time.monotonic()
    )
    ctx.spaces[(namespace, name)] = reads
    try:
        observed = replace(_observe(owner, state, children), spaces=reads.spaces)
    except Exception as exc:
        failure = failure or _reportable(exc, ctx.settings.retry_delay_s)
        status = degraded_status(before, failure.reason, str(failure), meta["generation"], stamp)
    else:
        if failure is not None:
            observed = replace(observed, error=str(failure), error_reason=failure.reason)
        active = deployment_name(name, state.active_slot)
        status = compute_status(
            generation=meta["generation"],
            state=state,
            observed=observed,
            endpoint=endpoint(objects, namespace, ctx.settings.cluster_domain)
            or before.get("endpoint", ""),
            selector=_selector(objects, active) or before.get("selector", ""),
            slot_label=SLOT_LABEL,
            previous=before,
            now=stamp,
            weights=weights,
            promotion=promotion,
            pending_endpoint=pending_endpoint(objects, namespace, ctx.settings.cluster_domain)
            if promotion is not None
            else "",
        )
    if status != {k: before.get(k) for k in status}:
        await patch_status(
            ctx.client, namespace, name, status, retry_delay=ctx.settings.retry_delay_s
        )
    if state.blue_green and before.get("pendingModel") != state.pending_model:
        ctx.metrics.swaps.labels("started").inc()
    for type_, reason, message in transitions(before, status):
        # the ClipService as read from the API: the raw body kopf's Body wraps
        body = kopf.Body(cast(kopf.RawBody, owner))
        kopf.event(body, type=type_, reason=reason, message=message)
    return failure


async def reconcile(ctx: Context, namespace: str, name: str) -> None:
    """Bring one ClipService's children to its spec and report status; raises errors.py's.

    Every failure but a transient one is reported on the ClipService (Degraded, with its reason
    and message, and a Warning event) before it is raised to the work queue.
    """
    # Read from the API, not a watch: the swap state in its status is what this operator wrote
    # last, and a copy behind that write would promote a finished swap again.
    owner = await ctx.client.get(API_VERSION, KIND, namespace, name)
    if owner is None or owner["metadata"].get("deletionTimestamp"):
        ctx.spaces.pop((namespace, name), None)
        return  # the garbage collector removes the children
    # One view of the children for the whole pass; any change after this moment triggers
    # another pass (handlers.py), which sees it.
    children = ctx.indexes.children(namespace, name)
    state, objects = _planned(owner), []
    promotion: Decision | None = None
    weights: list[Weights] = []
    applied: list[Obj] = []
    failure: ReconcileError | None = None
    try:
        check_values(owner["spec"], ctx.settings.values_allow)  # before anything is rendered
        promotion = await _promotion(ctx, owner, state)
        state = await _advance_swap(ctx, owner, children, state, promotion)
        if not state.blue_green:
            promotion = None
        objects = await _desired(ctx, owner, state, held=promotion is not None)
        if cache_type(owner["spec"]) == SHARED:
            objects, weights = await _prefetch(ctx, owner, state, objects, children)
        await _apply_and_prune(ctx, owner, objects, applied)
    except Exception as exc:
        failure = _reportable(exc, ctx.settings.retry_delay_s)
    children = children.with_applied(applied)
    failure = await _report(ctx, owner, state, objects, children, failure, weights, promotion)
    if failure is not None:
        raise failure


async def _sweep(ctx: Context, namespace: str | None) -> None:
    """Leave out of every later view the children kopf's indexes still hold though the API
    server deleted them (children.Indexes.forget): four list calls per resync, for all
    ClipServices at once."""
    held = ctx.indexes.uids(namespace)  # before the lists: held now, not listed after: gone
    listed: set[str] = set()
    for api_version, kind in WATCHED_KINDS:
        found = await ctx.client.list(api_version, kind, namespace or "", OWNER_LABEL)
        listed |= {str(o["metadata"].get("uid", "")) for o in found}
    ctx.indexes.forget(held - listed)


async def resync_forever(
    ctx: Context, trigger: Callable[[str, str], None], indexed: asyncio.Event
) -> None:
    """Periodically trigger every ClipService: a safety net for missed watch events. Starts
    once the indexes are filled (`indexed`), as the watch events' reconciles do."""
    if ctx.settings.resync_s <= 0:
        return
    await indexed.wait()
    while True:
        await asyncio.sleep(ctx.settings.resync_s)
        for namespace in ctx.settings.namespace or (None,):
            where = f"/namespaces/{namespace}" if namespace else ""
            try:
                await _sweep(ctx, namespace)
            except ApiError as exc:
                logger.warning("resync: %s", exc)  # the ClipServices are resynced all the same
            try:
                found = await ctx.client.request("GET", f"/apis/{API_VERSION}{where}/{PLURAL}")
            except ApiError as exc:
                logger.warning("resync: %s", exc)
                continue
            for item in (found or {}).get("items", []):
                trigger(item["metadata"]["namespace"], item["metadata"]["name"])
