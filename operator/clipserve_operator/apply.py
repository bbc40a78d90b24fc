"""Every write to the API: server-side apply, prune by owner label, status patches."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any, NoReturn

from .constants import API_VERSION, FIELD_MANAGER, OWNER_LABEL, PLURAL, Obj
from .errors import ApiError, Forbidden, KindNotServed, NotOwned, ReconcileError, api_failure
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

# Objects known to belong to their ClipService: (ClipService uid, namespace, apiVersion, kind,
# name) -> the object's uid. One not known is read before it is applied (an object of that name
# may have been there before); one known is applied with its uid, which the API server keeps
# immutable, so one gone or replaced since (deleted, then created by someone else) fails to
# apply and is read again rather than being taken over. Kept in the operator's memory: after a
# restart, each object is read once again.
Key = tuple[str, str, str, str, str]
Owned = dict[Key, str]
_OWNED_MAX = 4096


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


def _owner_uid(obj: Mapping[str, Any]) -> str:
    """The uid of the ClipService a desired object names as its controller (desired_objects)."""
    refs = obj["metadata"].get("ownerReferences") or []
    return next((str(r["uid"]) for r in refs if r.get("controller")), "")


def owned_by(found: Mapping[str, Any], owner_uid: str) -> bool:
    """True when an object as stored carries an ownerReference to that ClipService."""
    refs = found.get("metadata", {}).get("ownerReferences") or []
    return any(r.get("uid") == owner_uid for r in refs)


def _owned_key(obj: Mapping[str, Any]) -> Key:
    api_version, kind, name = object_key(obj)
    return (_owner_uid(obj), obj["metadata"].get("namespace", ""), api_version, kind, name)


def _remember(owned: Owned, key: Key, stored: Mapping[str, Any]) -> None:
    if len(owned) >= _OWNED_MAX:
        owned.clear()  # ClipServices deleted long ago; the rest are read once again
    owned[key] = stored["metadata"]["uid"]


async def _not_owned(
    client: KubeClient, objects: list[Mapping[str, Any]], owned: Owned
) -> dict[Key, ReconcileError]:
    """Read each object not known to be its ClipService's; NotOwned names every one that exists
    and belongs to something else (a Service `web` made by hand, a claim `web-weights` holding
    someone's data): applying would take it over, and the garbage collector would delete it with
    the ClipService. Returns the objects the operator may not read (RBAC), not to be applied."""
    foreign: list[str] = []
    unreadable: dict[Key, ReconcileError] = {}
    for obj in objects:
        key = _owned_key(obj)
        if key in owned:
            continue
        api_version, kind, name = object_key(obj)
        path = await client.path(api_version, kind, obj["metadata"].get("namespace"), name)
        if path is None:
            continue  # a kind the cluster lacks: apply_objects reports it
        try:
            found = await client.request("GET", path)
        except ApiError as exc:
            if exc.status != 403:
                raise
            unreadable[key] = Forbidden.of(exc)  # the others are still applied
            continue
        if found is None:
            continue  # created by the apply; known from then on
        if not owned_by(found, key[0]):
            foreign.append(f"{kind} {name}")
            continue
        _remember(owned, key, found)
    if foreign:
        raise NotOwned(
            f"{', '.join(foreign)}: already there and not this ClipService's (no ownerReference "
            "to it): left untouched and not deleted with the ClipService, and nothing more is "
            "applied until it is deleted or renamed (or the ClipService is named otherwise)"
        )
    return unreadable


def _uid_refused(exc: ApiError) -> bool:
    """The API server refused the uid an object was applied with: no object has that name any
    more (409 uid mismatch) or another one has (422: uid is immutable)."""
    text = str(exc)
    return (exc.status == 409 and "uid mismatch" in text) or (
        exc.status == 422 and "metadata.uid" in text
    )


async def _apply_owned(
    client: KubeClient, path: str, desired: Mapping[str, Any], owned: Owned, applied: list[Obj]
) -> ReconcileError | None:
    """Apply one object of the ClipService, with its uid once known, and add it to `applied`
    as stored; returns why it was not applied where others still can be (image volumes the API
    server would drop, RBAC)."""
    key = _owned_key(desired)
    while True:
        uid = owned.get(key)
        obj = {**desired, "metadata": {**desired["metadata"], "uid": uid}} if uid else desired
        try:
            if image_mounts(obj):
                stored = await _apply(client, path, obj, dry_run=True)
                if dropped := dropped_image_volumes(obj, stored):
                    # Not applied: its pods would start without /cache and crash on --offline.
                    # What runs now stays (prune keeps it: it is still rendered), so the old slot
                    # of a swap, or a slot switched to type image, goes on serving.
                    return image_volume_unsupported(obj, dropped)
            stored = await _apply(client, path, obj, dry_run=False)
        except ApiError as exc:
            if uid is None or not _uid_refused(exc):
                raise
            # Gone since it was applied (pruned, deleted by hand) or replaced by someone else's:
            # read it again, as before a first apply (NotOwned if it is not this ClipService's).
            del owned[key]
            if unreadable := await _not_owned(client, [desired], owned):
                return next(iter(unreadable.values()))
            continue
        if stored:
            _remember(owned, key, stored)
            applied.append(stored)
        return None


async def apply_objects(
    client: KubeClient,
    objects: Iterable[Mapping[str, Any]],
    *,
    retry_delay: float,
    owned: Owned,
    applied: list[Obj] | None = None,
) -> None:
    """Server-side apply each object as `clipserve-operator`, taking over conflicting fields,
    but only objects of this ClipService: NotOwned before anything is applied otherwise. Each
    object applied is added to `applied` as the API server stored it, also when others fail
    (the reconcile reports its status from them).

    An object that cannot be applied for good (say, a ServiceMonitor without its CRD) does not
    stop the others: the Deployment and Service still get applied, then the failures are raised.
    An object with image volumes is dry-run first: an API server whose ImageVolume feature gate
    is off drops them and their mounts without a word (kubernetes pkg/api/pod dropImageVolumes).
    """
    objects, applied = list(objects), applied if applied is not None else []
    try:
        unreadable = await _not_owned(client, objects, owned)
    except ApiError as exc:
        _raise_for(exc, retry_delay)
    failures: list[ReconcileError] = list(unreadable.values())
    for obj in objects:
        if _owned_key(obj) in unreadable:
            continue
        api_version, kind, name = object_key(obj)
        if not await client.namespaced(api_version, kind):
            # Absent kinds (no such CRD) and cluster-scoped ones cannot be owned by a ClipService.
            failures.append(
                KindNotServed(
                    f"cannot apply {kind} {name}: the cluster serves no namespaced "
                    f"{api_version} {kind}"
                )
            )
            continue
        path = await client.path(api_version, kind, obj["metadata"].get("namespace"), name)
        assert path is not None
        try:
            if failure := await _apply_owned(client, path, obj, owned, applied):
                failures.append(failure)
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
    client: KubeClient,
    namespace: str,
    name: str,
    status: Mapping[str, Any],
    *,
    retry_delay: float,
    plural: str = PLURAL,
) -> None:
    """Replace the status fields the operator owns (merge patch on the status subresource of a
    ClipService, or of a ClipJob with `plural`)."""
    path = f"/apis/{API_VERSION}/namespaces/{namespace}/{plural}/{name}/status"
    try:
        await client.request(
            "PATCH",
            path,
            json={"status": dict(status)},
            content_type="application/merge-patch+json",
        )
    except ApiError as exc:
        _raise_for(exc, retry_delay)
