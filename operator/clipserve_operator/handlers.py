"""kopf handlers: they only configure kopf, keep kopf's indexes of the children and hand work
to the work queue in memo."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping
from functools import partial
from typing import Any

import kopf
from prometheus_client import start_http_server

from .children import Indexes, Owner, index_entry
from .clipjob.reconcile import reconcile_clipjob
from .constants import (
    CLIPJOB_LABEL,
    GROUP,
    JOB_PLURAL,
    KOPF_PREFIX,
    OWNER_LABEL,
    PLURAL,
    VERSION,
    Obj,
)
from .kube import KubeClient, connection_info
from .metrics import Metrics
from .reconcile import Context, reconcile, resync_forever
from .settings import Settings
from .workqueue import WorkQueue


@kopf.on.startup()
async def configure(
    settings: kopf.OperatorSettings,
    memo: kopf.Memo,
    logger: kopf.Logger,
    **kwargs: Any,
) -> None:
    """kopf settings, the API client, metrics and the work queue (shared through memo)."""
    # No change handlers write progress, but keep any kopf bookkeeping under our own prefix.
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=KOPF_PREFIX)
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(prefix=KOPF_PREFIX)
    settings.posting.level = logging.INFO
    # Resources are known up front (the CRD ships with the chart): no cluster-wide scans of
    # CRDs and namespaces, so the ClusterRole needs no access to them.
    settings.scanning.disabled = True
    logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per API call otherwise
    # From the command line (cli.py), else from the environment (`kopf run` in the tests).
    config: Settings = memo.get("settings") or Settings.from_env()
    if not config.verbose:
        # kopf logs "Handler ... succeeded" for every watch event; our own logger says what changed.
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    settings.watching.server_timeout = 300
    settings.watching.client_timeout = 330
    metrics = Metrics()
    client = KubeClient(lambda: connection_info(settings))
    ctx = Context(client=client, settings=config, metrics=metrics, indexes=_indexes(kwargs))
    memo.client = client
    memo.queue = WorkQueue(
        partial(reconcile, ctx), metrics=metrics, retry_delay_s=config.retry_delay_s
    )
    ctx.requeue = memo.queue.later
    # ClipJobs have their own queue: their names may equal a ClipService's.
    memo.jobs = WorkQueue(
        partial(reconcile_clipjob, ctx), metrics=metrics, retry_delay_s=config.retry_delay_s
    )
    ctx.requeue_jobs = memo.jobs.later
    # Set by the first watch event handled: kopf calls a handler only once every index holds
    # its first listing, and a reconcile must not read half-filled indexes.
    memo.indexed = asyncio.Event()
    memo.resync = asyncio.get_running_loop().create_task(
        resync_forever(ctx, memo.queue.trigger, memo.indexed)
    )
    if config.metrics_port:
        memo.metrics_server, _thread = start_http_server(
            config.metrics_port, registry=metrics.registry
        )
        logger.info("metrics on :%s/metrics", memo.metrics_server.server_address[1])


@kopf.on.login()
def login(settings: kopf.OperatorSettings, **_: Any) -> kopf.ConnectionInfo:
    """Log kopf in with the same credentials as the operator's own client."""
    return connection_info(settings)


@kopf.on.cleanup()
async def shutdown(memo: kopf.Memo, **_: Any) -> None:
    """Stop reconciles, the resync loop and the metrics server."""
    memo.resync.cancel()
    await memo.queue.close()
    await memo.jobs.close()
    await memo.client.close()
    if memo.get("metrics_server") is not None:
        memo.metrics_server.shutdown()
        memo.metrics_server.server_close()  # free the port for a restart in the same process


@kopf.on.probe(id="reconciles")
async def reconciles(memo: kopf.Memo, **_: Any) -> int:
    """Liveness detail: ClipServices being reconciled right now."""
    return int(memo.queue.running)


# What each reconcile reads of its children (children.py): kopf keeps them by owner as its
# watches see them. Same kinds and labels as the event handlers below, so a change of anything
# indexed also triggers a reconcile that reads it.


@kopf.index("apps", "v1", "deployments", labels={OWNER_LABEL: kopf.PRESENT})
def owned_deployments(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[Owner, Obj]:
    """Deployments by ClipService: the slots, their model and rollout."""
    return index_entry(namespace, labels[OWNER_LABEL], body)


@kopf.index("batch", "v1", "jobs", labels={OWNER_LABEL: kopf.PRESENT})
def owned_jobs(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[Owner, Obj]:
    """Jobs by ClipService: the weights prefetches."""
    return index_entry(namespace, labels[OWNER_LABEL], body)


@kopf.index("", "v1", "pods", labels={OWNER_LABEL: kopf.PRESENT})
def owned_pods(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[Owner, Obj]:
    """Pods by ClipService: readiness, scheduling failures, device reports, prefetch pods."""
    return index_entry(namespace, labels[OWNER_LABEL], body)


@kopf.index("autoscaling", "v2", "horizontalpodautoscalers", labels={OWNER_LABEL: kopf.PRESENT})
def owned_autoscalers(
    namespace: str | None, labels: kopf.Labels, body: kopf.Body, **_: Any
) -> dict[Owner, Obj]:
    """HPAs by ClipService: the chart's, or the one KEDA makes with the ScaledObject's labels."""
    return index_entry(namespace, labels[OWNER_LABEL], body)


@kopf.on.event(GROUP, VERSION, PLURAL)
async def clipservice_changed(
    type: str, namespace: str | None, name: str, memo: kopf.Memo, **_: Any
) -> None:
    """Any change of a ClipService (and the initial listing after a restart) reconciles it."""
    if type != "DELETED":
        _trigger(memo, namespace, name)


@kopf.on.event("apps", "v1", "deployments", labels={OWNER_LABEL: kopf.PRESENT})
async def deployment_changed(
    namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **_: Any
) -> None:
    """Rollout progress and drift (an edited Deployment) reconcile the owning ClipService."""
    _trigger(memo, namespace, labels[OWNER_LABEL])


@kopf.on.event("", "v1", "pods", labels={OWNER_LABEL: kopf.PRESENT})
async def pod_changed(
    namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **_: Any
) -> None:
    """Pod readiness and scheduling failures update the owning ClipService's status."""
    _trigger(memo, namespace, labels[OWNER_LABEL])


@kopf.on.event("batch", "v1", "jobs", labels={OWNER_LABEL: kopf.PRESENT})
async def job_changed(
    namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **_: Any
) -> None:
    """A prefetch Job that finished (or failed) lets its slot start (or shows why not)."""
    _trigger(memo, namespace, labels[OWNER_LABEL])


@kopf.on.event("", "v1", "services", labels={OWNER_LABEL: kopf.PRESENT})
async def service_changed(
    namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **_: Any
) -> None:
    """An edited Service (say, its selector moved by hand) is put back at once."""
    _trigger(memo, namespace, labels[OWNER_LABEL])


@kopf.on.event("autoscaling", "v2", "horizontalpodautoscalers", labels={OWNER_LABEL: kopf.PRESENT})
async def autoscaler_changed(
    namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **_: Any
) -> None:
    """The HPA's view (replicas wanted, metrics, why it cannot scale) goes into the status."""
    _trigger(memo, namespace, labels[OWNER_LABEL])


@kopf.on.event(GROUP, VERSION, JOB_PLURAL)
async def clipjob_changed(
    type: str, namespace: str | None, name: str, spec: kopf.Spec, memo: kopf.Memo, **_: Any
) -> None:
    """A ClipJob created or changed is reconciled; one that declares it promotes a ClipService
    also reconciles that ClipService (its held swap may move now, or show the failure)."""
    if type == "DELETED" or namespace is None:
        return
    memo.jobs.trigger(namespace, name)
    promotes = (spec.get("promotes") or {}).get("clipService")
    if promotes:
        _trigger(memo, namespace, promotes)


@kopf.on.event("batch", "v1", "jobs", labels={CLIPJOB_LABEL: kopf.PRESENT})
async def embed_job_changed(
    namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **_: Any
) -> None:
    """An embedding Job's indexes completing or failing update its ClipJob."""
    if namespace is not None:
        memo.jobs.trigger(namespace, labels[CLIPJOB_LABEL])


@kopf.on.event("", "v1", "pods", labels={CLIPJOB_LABEL: kopf.PRESENT})
async def embed_pod_changed(
    namespace: str | None, labels: kopf.Labels, memo: kopf.Memo, **_: Any
) -> None:
    """An embedding pod started, finished or failed (its words go into the ClipJob's status)."""
    if namespace is not None:
        memo.jobs.trigger(namespace, labels[CLIPJOB_LABEL])


def _indexes(kwargs: Mapping[str, Any]) -> Indexes:
    """kopf passes every handler its indexes under the index functions' names (empty at
    start-up, filled as the watches list)."""
    return Indexes(
        deployments=kwargs["owned_deployments"],
        jobs=kwargs["owned_jobs"],
        pods=kwargs["owned_pods"],
        autoscalers=kwargs["owned_autoscalers"],
    )


def _trigger(memo: kopf.Memo, namespace: str | None, name: str) -> None:
    """Queue a reconcile of a ClipService (kopf types `namespace` as optional for cluster-scoped
    objects; every object watched here is namespaced)."""
    memo.indexed.set()
    if namespace is not None:
        memo.queue.trigger(namespace, name)
