"""Model weights fetched once per ClipService, before any pod needs them (pure).

spec.modelCache.type `shared`: the operator owns a claim (`<name>-weights`, or the user's
`existingClaim`) and, for each model a slot runs, a Job running `clipserve download` into it.
The Job is built from that slot's own rendered Deployment (same image, env, secrets, node pool,
user), so it fetches exactly what the pods will read. A slot's Deployment is created only once
its model's Job has succeeded; its pods mount the claim read-only and serve --offline.
spec.modelCache.type `image`: each slot mounts the model image spec.modelCache.images names for
its model (an image volume), read-only and --offline; an API server that would drop the
image volume (ImageVolume feature gate off) is caught before the Deployment is applied.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from .constants import GROUP, MODEL_ANNOTATION, OWNER_LABEL, Obj
from .errors import ImageVolumeUnsupported, InvalidSpec
from .redact import redact

SHARED, IMAGE = "shared", "image"
COMPONENT = "weights"
COMPONENT_LABEL = "app.kubernetes.io/component"
NAME_LABEL, INSTANCE_LABEL = "app.kubernetes.io/name", "app.kubernetes.io/instance"
# Jobs of one model carry the hash of its spec: the status maps a Job back to its model.
MODEL_LABEL = f"{GROUP}/weights-model"
CONTAINER = "download"
DOWNLOAD = ("clipserve", "download")
CACHE_VOLUME = "cache"  # the chart's weights volume (charts/clipserve server-deployment.yaml)
# The download needs no GPU and little memory; importing torch and open_clip dominates.
RESOURCES = {"requests": {"cpu": "100m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}}
# Retries after a failed pod: `clipserve download` already resumes cut connections itself, so a
# failed pod means a lasting cause (404, sha256 mismatch, no space) that the status must show.
BACKOFF_LIMIT = 1
_PROGRESS = re.compile(r"^progress (\d+)/(\d+) bytes", re.MULTILINE)
# The variables a writable cache needs moved: the download writes only to --cache-dir.
_SCRATCH_ENV = {"HF_HOME": "/tmp/hf", "TORCH_HOME": "/tmp/torch", "XDG_CACHE_HOME": "/tmp/xdg"}


def cache_type(spec: Mapping[str, Any]) -> str:
    """spec.modelCache.type (emptyDir when unset)."""
    return str((spec.get("modelCache") or {}).get("type") or "emptyDir")


def claim_name(name: str, spec: Mapping[str, Any]) -> str:
    """The shared claim: the user's existingClaim, else the one the operator creates."""
    return (spec.get("modelCache") or {}).get("existingClaim") or f"{name}-weights"


def cache_values(name: str, spec: Mapping[str, Any], model: str) -> dict[str, Any]:
    """The chart's modelCache values for a slot running `model`."""
    cache = dict(spec.get("modelCache") or {})
    kind = cache_type(spec)
    if kind == SHARED:
        return {"type": "existingClaim", "existingClaim": claim_name(name, spec), "readOnly": True}
    if kind == IMAGE:
        images = cache.get("images") or {}
        if model not in images:
            raise InvalidSpec(
                f"spec.modelCache.images names no model image for {model} "
                f"(it has: {', '.join(sorted(images)) or 'none'})"
            )
        return {
            "type": "image",
            "image": {
                "reference": images[model],
                "pullPolicy": cache.get("pullPolicy", "IfNotPresent"),
            },
        }
    chart_keys = ("type", "size", "storageClassName", "accessModes", "existingClaim")
    return {k: v for k, v in cache.items() if k in chart_keys}


def image_mounts(obj: Mapping[str, Any]) -> set[tuple[str, str]]:
    """(container, volume) for each mount of an image volume in obj's pod template, and
    ("", volume) for each image volume."""
    pod = ((obj.get("spec") or {}).get("template") or {}).get("spec") or {}
    names = {v["name"] for v in pod.get("volumes") or [] if v.get("image")}
    containers = [*(pod.get("initContainers") or []), *(pod.get("containers") or [])]
    mounts = {
        (c["name"], m["name"])
        for c in containers
        for m in c.get("volumeMounts") or []
        if m["name"] in names
    }
    return mounts | {("", name) for name in names}


def dropped_image_volumes(sent: Mapping[str, Any], stored: Mapping[str, Any]) -> list[str]:
    """Image volumes of `sent` that the API server's `stored` object lacks or mounts less."""
    return sorted({volume for _, volume in image_mounts(sent) - image_mounts(stored)})


def image_volume_unsupported(obj: Mapping[str, Any], volumes: list[str]) -> ImageVolumeUnsupported:
    """The error for an object whose image volumes the API server drops."""
    what = f"{obj['kind']} {obj['metadata']['name']}"
    return ImageVolumeUnsupported(
        f"the API server drops the image volume {', '.join(volumes)} of {what} "
        "(spec.modelCache.type image): this cluster does not serve image volumes, which need "
        "Kubernetes 1.35+ (1.33-1.34: the ImageVolume feature gate on the API server and the "
        f"kubelets) and containerd 2.1+ or CRI-O 1.31+; {what} is not applied, since its pods "
        "would start without their weights; use spec.modelCache.type shared on this cluster"
    )


def claim(name: str, spec: Mapping[str, Any]) -> Obj | None:
    """The claim the operator creates for a shared cache (None: the user's existingClaim)."""
    cache = spec.get("modelCache") or {}
    if cache.get("existingClaim"):
        return None
    claim_spec: dict[str, Any] = {
        "accessModes": list(cache.get("accessModes") or ["ReadWriteMany"]),
        "resources": {"requests": {"storage": cache.get("size") or "10Gi"}},
    }
    if cache.get("storageClassName"):
        claim_spec["storageClassName"] = cache["storageClassName"]
    return {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": claim_name(name, spec), "labels": {COMPONENT_LABEL: COMPONENT}},
        "spec": claim_spec,
    }


def model_hash(model: str) -> str:
    """A label-safe key for a model spec."""
    return hashlib.sha256(model.encode()).hexdigest()[:16]


def prefetch_job(name: str, deployment: Mapping[str, Any]) -> Obj:
    """The Job that downloads the weights `deployment`'s pods will read, built from its pod."""
    template = deployment["spec"]["template"]
    model = template["metadata"]["annotations"][MODEL_ANNOTATION]
    pod = copy.deepcopy(template["spec"])
    server = pod["containers"][0]
    mounts = [m for m in server.get("volumeMounts") or [] if m["name"] != CACHE_VOLUME]
    cache_path = next(m["mountPath"] for m in server["volumeMounts"] if m["name"] == CACHE_VOLUME)
    env = [
        e for e in server.get("env") or [] if e["name"] not in (*_SCRATCH_ENV, "CLIPSERVE_OFFLINE")
    ]
    env += [{"name": k, "value": v} for k, v in _SCRATCH_ENV.items()]
    container = {
        "name": CONTAINER,
        "image": server["image"],
        "imagePullPolicy": server.get("imagePullPolicy", "IfNotPresent"),
        "command": [*DOWNLOAD, "--model", model, "--cache-dir", cache_path, "--progress", "lines"],
        "env": env,
        "resources": RESOURCES,
        "securityContext": server.get("securityContext", {}),
        # its last log line (the error) becomes the termination message the status shows
        "terminationMessagePolicy": "FallbackToLogsOnError",
        "volumeMounts": [{"name": CACHE_VOLUME, "mountPath": cache_path}, *mounts],
    }
    for volume in pod["volumes"]:
        if volume["name"] == CACHE_VOLUME:
            volume["persistentVolumeClaim"].pop("readOnly", None)
    for key in ("initContainers", "terminationGracePeriodSeconds"):
        pod.pop(key, None)
    pod.update(containers=[container], restartPolicy="Never")
    labels = {OWNER_LABEL: name, COMPONENT_LABEL: COMPONENT, MODEL_LABEL: model_hash(model)}
    # The chart's weights NetworkPolicy selects these (clipserve.weightsSelectorLabels): the
    # servers' egress rules hold for the download too. The servers' own name would put the
    # Job's pods behind their Service.
    server_labels = template["metadata"]["labels"]
    labels[NAME_LABEL] = f"{server_labels[NAME_LABEL]}-weights"
    labels[INSTANCE_LABEL] = server_labels[INSTANCE_LABEL]
    job_spec = {
        "backoffLimit": BACKOFF_LIMIT,
        "template": {
            "metadata": {"labels": labels, "annotations": {MODEL_ANNOTATION: model}},
            "spec": pod,
        },
    }
    # Named by its content: a changed pod (new image, env) is a new Job, never an edit of an
    # immutable one; on a filled cache it finishes in seconds.
    digest = hashlib.sha256(json.dumps(job_spec, sort_keys=True).encode()).hexdigest()[:10]
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": f"{name[:40]}-weights-{digest}",
            "labels": labels,
            "annotations": {MODEL_ANNOTATION: model},
        },
        "spec": job_spec,
    }


@dataclass(frozen=True)
class Weights:
    """Where one model's weights stand; `phase`: Pending, Downloading, Ready or Failed."""

    model: str
    job: str
    phase: str
    done: int = 0
    total: int = 0
    message: str = ""

    def summary(self) -> str:
        """One line for the WeightsReady condition (a URL's credentials redacted)."""
        if self.phase == "Downloading" and self.total:
            pct = 100 * self.done // self.total
            return redact(f"{self.model}: {self.done}/{self.total} bytes ({pct}%)")
        return redact(f"{self.model}: {self.message or self.phase.lower()}")

    def to_status(self) -> dict[str, Any]:
        """The entry of status.weights; the model and a failed download's words, which quote
        its URL, with credentials redacted."""
        return {
            "model": redact(self.model),
            "job": self.job,
            "phase": self.phase,
            "bytesDone": self.done,
            "bytesTotal": self.total,
            "message": redact(self.message),
        }


def parse_progress(log: str) -> tuple[int, int] | None:
    """(bytes done, total) from the last `progress D/T bytes` line of `clipserve download`."""
    found = _PROGRESS.findall(log)
    return (int(found[-1][0]), int(found[-1][1])) if found else None


def weights_state(
    model: str, job: Mapping[str, Any] | None, job_name: str, pods: Iterable[Obj], log: str = ""
) -> Weights:
    """Where a model's weights stand, from its Job, the Job's pods and its running pod's log."""
    if job is None:
        return Weights(model, job_name, "Pending", message="prefetch Job not created yet")
    conditions = {c.get("type"): c for c in (job.get("status") or {}).get("conditions") or []}
    if conditions.get("Complete", {}).get("status") == "True":
        return Weights(model, job_name, "Ready", message="in the cache")
    words = _pod_words(pods)
    if conditions.get("Failed", {}).get("status") == "True":
        why = words or conditions["Failed"].get("message") or conditions["Failed"].get("reason")
        return Weights(model, job_name, "Failed", message=f"download failed: {why}")
    progress = parse_progress(log)
    if progress:
        return Weights(model, job_name, "Downloading", *progress)
    return Weights(model, job_name, "Pending", message=words or "prefetch Job starting")


def _pod_words(pods: Iterable[Obj]) -> str:
    """What the Job's newest pod says: its failure's last line, or why it cannot start."""
    newest = sorted(pods, key=lambda p: p["metadata"].get("creationTimestamp", ""))[-1:]
    for pod in newest:
        status = pod.get("status") or {}
        for cs in status.get("containerStatuses") or []:
            state = cs.get("state") or {}
            done = state.get("terminated") or {}
            lines = [ln for ln in str(done.get("message") or "").splitlines() if ln.strip()]
            if done.get("exitCode") and lines:
                return lines[-1].strip()
            waiting = state.get("waiting") or {}
            if waiting.get("message"):
                return f"{waiting.get('reason')}: {waiting['message']}"
        for cond in status.get("conditions") or []:
            if cond.get("type") == "PodScheduled" and cond.get("status") == "False":
                return f"{cond.get('reason')}: {cond.get('message')}"
    return ""


def ready_models(states: Iterable[Weights]) -> set[str]:
    """Models whose weights are in the cache."""
    return {w.model for w in states if w.phase == "Ready"}


def condition_fields(states: list[Weights]) -> tuple[bool, str, str]:
    """(ok, reason, message) of the WeightsReady condition."""
    if not states:
        return True, "NoPrefetch", "no prefetched weights"
    failed = [w for w in states if w.phase == "Failed"]
    ok = all(w.phase == "Ready" for w in states)
    reason = "Cached" if ok else "DownloadFailed" if failed else "Downloading"
    return ok, reason, "; ".join(w.summary() for w in states)
