"""ClipService spec -> chart values -> `helm template` -> objects to apply (pure but for helm)."""

from __future__ import annotations

import copy
import json
import subprocess
import tempfile
from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from .constants import API_VERSION, ENDPOINT_ANNOTATION, KIND, MANAGED_BY, OWNER_LABEL, Obj
from .errors import HelmNotFound, RenderFailed
from .swap import SwapState
from .weights import cache_values


def deep_merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Merge override into a copy of base; nested mappings merge, everything else replaces."""
    out = copy.deepcopy(dict(base))
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            out[key] = deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _present(mapping: Mapping[str, Any], *keys: str) -> dict[str, Any]:
    """The given keys of mapping that are set (not None)."""
    return {k: mapping[k] for k in keys if mapping.get(k) is not None}


def chart_values(
    name: str, spec: Mapping[str, Any], *, model: str, slot: str, service_slot: str
) -> dict[str, Any]:
    """Chart values for one slot of a ClipService (the values contract of charts/clipserve)."""
    gpu = spec.get("gpu") or {}
    pool = spec.get("nodePool") or {}
    autoscaling = spec.get("autoscaling") or {}
    monitoring = spec.get("monitoring") or {}
    values: dict[str, Any] = {
        "replicaCount": spec.get("replicas", 1),
        "gpu": {
            "count": gpu.get("count", 0),
            "resourceName": gpu.get("resourceName", "nvidia.com/gpu"),
        },
        "autoscaling": {"enabled": bool(autoscaling) and autoscaling.get("enabled", True)},
        "serviceMonitor": {"enabled": bool(monitoring.get("serviceMonitor", False))},
        # Pods carry the owner label too, so the operator can watch and list them cheaply.
        "podLabels": {OWNER_LABEL: name},
    }
    values["autoscaling"].update(
        _present(
            autoscaling,
            "minReplicas",
            "maxReplicas",
            "targetCPUUtilizationPercentage",
            "queueDepthPerPod",
        )
    )
    if (
        autoscaling.get("queueDepthPerPod")
        and autoscaling.get("targetCPUUtilizationPercentage") is None
    ):
        # Queue depth alone: CPU says little about a GPU pod, and a CPU metric the cluster
        # cannot serve (no metrics-server) would keep the HPA from ever scaling down.
        values["autoscaling"]["targetCPUUtilizationPercentage"] = None
    values["serviceMonitor"].update(_present(monitoring, "interval", "labels"))
    values.update(
        _present(
            pool, "nodeSelector", "tolerations", "affinity", "runtimeClassName", "priorityClassName"
        )
    )
    values.update(_present(spec, "dtype", "device", "resources", "hfToken", "apiKey"))
    if spec.get("modelCache"):
        values["modelCache"] = cache_values(name, spec, model)
    if spec.get("batching"):
        values["batching"] = _present(
            spec["batching"], "maxBatchSize", "maxWaitMs", "maxQueue", "computeWorkers"
        )
    if spec.get("image"):
        values["image"] = _present(spec["image"], "repository", "tag", "pullPolicy")
    values = deep_merge(values, spec.get("values") or {})
    # Set last: spec.values cannot rename objects, change the model or move the Service.
    values.update({"fullnameOverride": name, "model": model, "slot": slot})
    values["service"] = deep_merge(values.get("service") or {}, {"slot": service_slot})
    return values


def helm_template(
    helm: str,
    chart: str,
    release: str,
    namespace: str,
    values: Mapping[str, Any],
    *,
    api_versions: Iterable[str] = (),
) -> list[Obj]:
    """Render the chart offline; RenderFailed carries helm's own message."""
    with tempfile.NamedTemporaryFile("w", suffix=".json") as f:
        json.dump(values, f)
        f.flush()
        cmd = [
            helm,
            "template",
            release,
            chart,
            "--namespace",
            namespace,
            "--values",
            f.name,
            "--skip-tests",
            "--no-hooks",
        ]
        for api in api_versions:
            cmd += ["--api-versions", api]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
        except OSError as exc:  # missing, not executable, not a binary
            raise HelmNotFound(f"cannot run helm ({helm}): {exc.strerror or exc}") from exc
        except subprocess.TimeoutExpired as exc:
            raise RenderFailed(f"helm template took over {exc.timeout:.0f} s") from exc
    if proc.returncode != 0:
        # helm's own words, less its advice to re-run with --debug (the operator cannot).
        lines = [ln for ln in proc.stderr.strip().splitlines() if not ln.startswith("Use --debug")]
        raise RenderFailed(f"helm template failed: {' '.join(lines).strip()[-800:]}")
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def render_state(render: Any, name: str, spec: Mapping[str, Any], state: SwapState) -> list[Obj]:
    """Objects for a swap state: the active slot and shared objects, plus the pending slot's own."""
    active = render(
        chart_values(
            name,
            spec,
            model=state.serving_model(),
            slot=state.active_slot,
            service_slot=state.active_slot,
        )
    )
    if not state.blue_green:
        return active
    pending = render(
        chart_values(
            name,
            spec,
            model=state.pending_model,
            slot=state.pending_slot,
            service_slot=state.active_slot,
        )
    )
    # Shared objects (Service, ServiceMonitor, ...) come from the active render only, so the
    # Service keeps selecting the serving slot; slot objects differ by name.
    shared = {object_key(o) for o in active}
    return active + [o for o in pending if object_key(o) not in shared]


def endpoint(objects: list[Obj], namespace: str, domain: str) -> str:
    """In-cluster URL (its `http` port) of the Service marked as the endpoint (the gate's, in
    front of servers that scale to zero), else of the only one."""
    services = [o for o in objects if o["kind"] == "Service"]
    marked = [
        s for s in services if (s["metadata"].get("annotations") or {}).get(ENDPOINT_ANNOTATION)
    ]
    for obj in marked or services:
        ports = obj.get("spec", {}).get("ports") or [{}]
        port = next((p for p in ports if p.get("name") == "http"), ports[0]).get("port", 3000)
        return f"http://{obj['metadata']['name']}.{namespace}.svc.{domain}:{port}"
    return ""


def pending_endpoint(objects: list[Obj], namespace: str, domain: str) -> str:
    """In-cluster URL of the Service that reaches only a held swap's pending slot
    (promotion.pending_service), or ""."""
    pending = [
        o for o in objects if o["kind"] == "Service" and o["metadata"]["name"].endswith("-pending")
    ]
    return endpoint(pending, namespace, domain) if pending else ""


def object_key(obj: Mapping[str, Any]) -> tuple[str, str, str]:
    """(apiVersion, kind, name) identifying a rendered object within its namespace."""
    return (obj["apiVersion"], obj["kind"], obj["metadata"]["name"])


def owner_reference(owner: Mapping[str, Any], kind: str = KIND) -> dict[str, Any]:
    """The ownerReference that lets the garbage collector delete children with their owner (a
    ClipService, or a ClipJob with `kind`)."""
    meta = owner["metadata"]
    return {
        "apiVersion": API_VERSION,
        "kind": kind,
        "name": meta["name"],
        "uid": meta["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


def desired_objects(
    rendered: Iterable[Mapping[str, Any]], owner: Mapping[str, Any], *, autoscaling: bool
) -> list[Obj]:
    """Rendered objects made ready to apply: namespace, owner label, ownerReference."""
    meta = owner["metadata"]
    out: list[Obj] = []
    for item in rendered:
        obj = copy.deepcopy(dict(item))
        obj_meta = obj.setdefault("metadata", {})
        obj_meta["namespace"] = meta["namespace"]
        labels = obj_meta.setdefault("labels", {})
        labels[OWNER_LABEL] = meta["name"]
        labels["app.kubernetes.io/managed-by"] = MANAGED_BY
        obj_meta["ownerReferences"] = [owner_reference(owner)]
        if autoscaling and obj["kind"] == "Deployment":
            # The HPA owns replicas; not applying the field keeps the operator from fighting it.
            obj.get("spec", {}).pop("replicas", None)
        out.append(obj)
    return out


def autoscaling_enabled(spec: Mapping[str, Any]) -> bool:
    """True when an autoscaler (the chart's HPA, or KEDA's), not spec.replicas, sets replicas."""
    autoscaling = spec.get("autoscaling") or {}
    values = spec.get("values") or {}
    if (values.get("keda") or {}).get("enabled"):
        return True
    values_hpa = (values.get("autoscaling") or {}).get("enabled")
    if values_hpa is not None:
        return bool(values_hpa)
    return bool(autoscaling) and bool(autoscaling.get("enabled", True))
