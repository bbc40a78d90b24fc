"""Every write to the API: server-side apply, prune by owner label, status patches."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, NoReturn

from .constants import API_VERSION, FIELD_MANAGER, OWNER_LABEL, PLURAL
from .errors import ApiError, KindNotServed, ReconcileError, api_failure
from .kube import KubeClient
from .render import object_key
from .weights import dropped_image_volumes, image_mounts, image_volume_unsupported

# Kinds the clipserve chart can render; prune looks at these plus whatever was rendered.
PRUNABLE_KINDS: tuple[tuple[str, str], ...] = (
    ("apps/v1", "Deployment"),
    ("v1", "Service"),
    ("v1", "ConfigMap"),
    ("v1", "PersistentVolumeClaim"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
    ("policy/v1", "PodDisruptionBudget"),
    ("networking.k8s.io/v1", "NetworkPolicy"),
    ("networking.k8s.io/v1", "Ingress"),
    ("monitoring.coreos.com/v1", "ServiceMonitor"),
    ("keda.sh/v1alpha1", "ScaledObject"),
)


def _raise_for(exc: ApiError, delay: float) -> NoReturn:
    """Re-raise an API failure as the reconcile error it is (a dying namespace passes through)."""
    if exc.namespace_terminating:
        raise exc
    raise api_failure(exc, delay) from exc


async def _apply(client: KubeClient, path: str, obj: Mapping[str, Any], *, dry_run: bool) -> Any:
    """Server-side apply one object; returns it as the API server stores it (or would)."""
    params = {"fieldManager": FIELD_MANAGER, "force": "true"}
    return await client.request(
        "PATCH",
        path,
        params={**params, "dryRun": "All"} if dry_run else params,
        content=json.dumps(obj).encode(),
        content_type="application/apply-patch+yaml",
    )


def _combined(failures: list[ReconcileError]) -> ReconcileError:
    """One error for several objects: the first one's reason, every message."""
    error = type(failures[0])("; ".join(str(f) for f in failures))
    error.external = any(f.external for f in failures)
    return error


async def apply_objects(
    client: KubeClient, objects: Iterable[Mapping[str, Any]], *, retry_delay: float
) -> None:
    """Server-side apply each object as `clipserve-operator`, taking over conflicting fields.

    An object that cannot be applied for good (say, a ServiceMonitor without its CRD) does not
    stop the others: the Deployment and Service still get applied, then the failures are raised.
    An object with image volumes is dry-run first: an API server whose ImageVolume feature gate
    is off drops them and their mounts without a word (kubernetes pkg/api/pod dropImageVolumes).
    """
    failures: list[ReconcileError] = []
    for obj in objects:
        api_version, kind, name = object_key(obj)
        namespace = obj["metadata"].get("namespace")
        if not await client.namespaced(api_version, kind):
            # Absent kinds (no such CRD) and cluster-scoped ones cannot be owned by a ClipService.
            failures.append(
                KindNotServed(
                    f"cannot apply {kind} {name}: the cluster serves no namespaced "
                    f"{api_version} {kind}"
                )
            )
            continue
        path = await client.path(api_version, kind, namespace, name)
        assert path is not None
        try:
            if image_mounts(obj):
                stored = await _apply(client, path, obj, dry_run=True)
                if dropped := dropped_image_volumes(obj, stored):
                    # Not applied: its pods would start without /cache and crash on --offline.
                    # What runs now stays (prune keeps it: it is still rendered), so the old slot
                    # of a swap, or a slot switched to type image, goes on serving.
                    failures.append(image_volume_unsupported(obj, dropped))
                    continue
            await _apply(client, path, obj, dry_run=False)
        except ApiError as exc:
            if exc.transient or exc.namespace_terminating:
                _raise_for(exc, retry_delay)
            failures.append(api_failure(exc, retry_delay))
    if failures:
        raise _combined(failures)


async def prune(
    client: KubeClient,
    owner: Mapping[str, Any],
    keep: Iterable[Mapping[str, Any]],
    *,
    retry_delay: float,
) -> list[str]:
    """Delete owned objects that are no longer rendered; returns 'Kind/name' of each deleted."""
    meta = owner["metadata"]
    wanted = {object_key(o) for o in keep}
    kinds = set(PRUNABLE_KINDS) | {(k[0], k[1]) for k in wanted}
    deleted = []
    for api_version, kind in sorted(kinds):
        try:
            items = await client.list(
                api_version, kind, meta["namespace"], f"{OWNER_LABEL}={meta['name']}"
            )
        except ApiError as exc:
            if exc.status == 403:
                continue  # not granted (kind never rendered by this chart), so never created
            _raise_for(exc, retry_delay)
        for item in items:
            item_meta = item["metadata"]
            owned = any(
                ref.get("uid") == meta["uid"] for ref in item_meta.get("ownerReferences") or []
            )
            if not owned or (api_version, kind, item_meta["name"]) in wanted:
                continue
            path = await client.path(api_version, kind, meta["namespace"], item_meta["name"])
            assert path is not None
            try:
                await client.request("DELETE", path, json={"propagationPolicy": "Background"})
            except ApiError as exc:
                _raise_for(exc, retry_delay)
            deleted.append(f"{kind}/{item_meta['name']}")
    return deleted


async def patch_status(
    client: KubeClient, namespace: str, name: str, status: Mapping[str, Any], *, retry_delay: float
) -> None:
    """Replace the status fields the operator owns (merge patch on the status subresource)."""
    path = f"/apis/{API_VERSION}/namespaces/{namespace}/{PLURAL}/{name}/status"
    try:
        await client.request(
            "PATCH",
            path,
            json={"status": dict(status)},
            content_type="application/merge-patch+json",
        )
    except ApiError as exc:
        _raise_for(exc, retry_delay)
