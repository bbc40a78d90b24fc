"""A ClipJob as an Indexed Job running `clipserve embed`, built from a server pod (pure).

The pod comes from a clipserve Deployment: a ClipService slot's own (spec.modelFrom), or the
chart rendered from the ClipJob's fields (spec.model). So the job embeds with exactly the
image, settings, GPU, node pool, user and weights cache the servers use, as `weights.py`'s
prefetch Job downloads with them. Each index of the Job owns the shards with
shard % parallelism == index (`clipserve embed` reads JOB_COMPLETION_INDEX, which Kubernetes
sets, and CLIPSERVE_EMBED_SLICES); a retried index resumes from the shards already published.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from typing import Any

from ..constants import CLIPJOB_LABEL, JOB_KIND, MODEL_ANNOTATION, Obj
from ..errors import InvalidSpec
from ..render import owner_reference

CONTAINER = "embed"
COMPONENT_LABEL = "app.kubernetes.io/component"
NAME_LABEL, INSTANCE_LABEL = "app.kubernetes.io/name", "app.kubernetes.io/instance"
SLICES_ENV = "CLIPSERVE_EMBED_SLICES"
INPUT_MOUNT, OUTPUT_MOUNT = "/input", "/output"
INPUT_VOLUME, OUTPUT_VOLUME = "embed-input", "embed-output"
# Where the pod writes its summary (the kubelet keeps it in the pod status for the operator).
TERMINATION_LOG = "/dev/termination-log"
# The server's fields an embedding pod has no use for (it serves nothing).
_SERVER_ONLY = ("ports", "readinessProbe", "livenessProbe", "startupProbe", "lifecycle")
# Credentials of an S3-compatible store, as the Secret's keys and the variables every S3
# client (pyarrow, boto3, s3fs) reads; the session token is optional.
S3_KEYS = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")
S3_OPTIONAL_KEYS = ("AWS_SESSION_TOKEN",)
DEFAULT_BACKOFF_PER_INDEX = 3
UNREADABLE_EXIT = 2  # `clipserve embed`'s exit code for input it cannot read (docs/corpus.md)


def job_name(name: str) -> str:
    """The Job of a ClipJob; short enough that `<job>-<index>-<5 chars>` pod names fit."""
    return f"{name[:46]}-embed"


def _location(where: Mapping[str, Any], field: str, mount: str, volume: str) -> tuple[str, Obj]:
    """(what `clipserve embed` is given, the volume it needs or {}) for spec.input/output."""
    if pvc := where.get("pvc"):
        path = str(pvc.get("path") or "").strip("/")
        claim = {"claimName": pvc["claimName"], "readOnly": field == "input"}
        return f"{mount}/{path}".rstrip("/"), {"name": volume, "persistentVolumeClaim": claim}
    if s3 := where.get("s3"):
        return str(s3["url"]), {}
    if url := where.get("url"):
        return str(url), {}
    raise InvalidSpec(f"spec.{field} needs pvc, s3 or url")


def _s3_env(where: Mapping[str, Any]) -> list[Obj]:
    """The store's endpoint, and its credentials from the named Secret: mounted as variables,
    never read by the operator."""
    s3 = where.get("s3") or {}
    env: list[Obj] = []
    if s3.get("endpoint"):
        env += [{"name": "AWS_ENDPOINT_URL", "value": s3["endpoint"]}]
    if s3.get("region"):
        env += [{"name": "AWS_DEFAULT_REGION", "value": s3["region"]}]
    if secret := s3.get("secretName"):
        for key in (*S3_KEYS, *S3_OPTIONAL_KEYS):
            ref = {
                "name": secret,
                "key": key,
                **({"optional": True} if key in S3_OPTIONAL_KEYS else {}),
            }
            env.append({"name": key, "valueFrom": {"secretKeyRef": ref}})
    return env


def _store_env(spec: Mapping[str, Any]) -> list[Obj]:
    """The one S3 store's variables: a pod holds one set of AWS_* credentials."""
    stores = [spec[f].get("s3") for f in ("input", "output") if spec[f].get("s3")]
    if len(stores) == 2 and (stores[0].get("endpoint"), stores[0].get("secretName")) != (
        stores[1].get("endpoint"),
        stores[1].get("secretName"),
    ):
        raise InvalidSpec(
            "spec.input.s3 and spec.output.s3 name different stores (endpoint or secretName); "
            "a ClipJob reads and writes one S3 store"
        )
    return _s3_env(spec["output"]) if spec["output"].get("s3") else _s3_env(spec["input"])


def embed_command(spec: Mapping[str, Any], model: str, source: str, target: str) -> list[str]:
    """`clipserve embed` for one pod (its slice comes from the environment)."""
    command = ["clipserve", "embed", "--model", model, source, "--output", target]
    command += ["--progress", "lines"]  # the JSON lines the operator reads
    columns = spec.get("input") or {}
    for key, flag in (("idColumn", "--id-column"), ("textColumn", "--text-column")):
        if columns.get(key):
            command += [flag, str(columns[key])]
    if columns.get("imageColumn"):
        command += ["--image-column", str(columns["imageColumn"])]
    if spec.get("shardSize"):
        command += ["--shard-size", str(spec["shardSize"])]
    return command


def embed_job(clipjob: Mapping[str, Any], deployment: Mapping[str, Any], model: str) -> Obj:
    """The Indexed Job embedding clipjob's input with `deployment`'s server pod and `model`."""
    meta, spec = clipjob["metadata"], clipjob["spec"]
    name = meta["name"]
    template = deployment["spec"]["template"]
    pod = copy.deepcopy(template["spec"])
    server = pod["containers"][0]
    source, in_volume = _location(spec["input"], "input", INPUT_MOUNT, INPUT_VOLUME)
    target, out_volume = _location(spec["output"], "output", OUTPUT_MOUNT, OUTPUT_VOLUME)
    parallelism = int(spec.get("parallelism") or 1)
    drop = {SLICES_ENV, "CLIPSERVE_MODEL", *S3_KEYS, *S3_OPTIONAL_KEYS, "AWS_ENDPOINT_URL"}
    env = [e for e in server.get("env") or [] if e["name"] not in drop]
    env += _store_env(spec)
    env.append({"name": SLICES_ENV, "value": str(parallelism)})
    mounts = list(server.get("volumeMounts") or [])
    for volume, mount, read_only in (
        (in_volume, INPUT_MOUNT, True),
        (out_volume, OUTPUT_MOUNT, False),
    ):
        if volume:
            pod.setdefault("volumes", []).append(volume)
            mounts.append({"name": volume["name"], "mountPath": mount, "readOnly": read_only})
    container = {k: v for k, v in server.items() if k not in _SERVER_ONLY}
    container.update(
        name=CONTAINER,
        command=embed_command(spec, model, source, target),
        env=env,
        volumeMounts=mounts,
        terminationMessagePath=TERMINATION_LOG,
        # A pod that fails says why (the loader's or the reader's words) in its status.
        terminationMessagePolicy="FallbackToLogsOnError",
    )
    container.pop("args", None)
    for key in ("initContainers", "terminationGracePeriodSeconds"):
        pod.pop(key, None)
    pod.update(containers=[container], restartPolicy="Never")
    # Not the servers' labels: those select pods into the ClipService's Service.
    server_labels = template["metadata"].get("labels") or {}
    labels = {
        CLIPJOB_LABEL: name,
        COMPONENT_LABEL: "embed",
        NAME_LABEL: f"{server_labels.get(NAME_LABEL, 'clipserve')}-embed",
        INSTANCE_LABEL: server_labels.get(INSTANCE_LABEL, name),
    }
    job_spec: Obj = {
        "completionMode": "Indexed",
        "completions": parallelism,
        "parallelism": parallelism,
        # Each index retries on its own: a lost pod costs its slice's unpublished shard only.
        "backoffLimitPerIndex": int(spec.get("backoffLimitPerIndex", DEFAULT_BACKOFF_PER_INDEX)),
        "podFailurePolicy": {
            "rules": [
                # Preemption, eviction, a drained node: not the pod's fault, no retry used up.
                {"action": "Ignore", "onPodConditions": [{"type": "DisruptionTarget"}]},
                # Exit 2: input that cannot be read at all, or a run.json of another run
                # (docs/corpus.md); a retry would say the same.
                {
                    "action": "FailIndex",
                    "onExitCodes": {
                        "containerName": CONTAINER,
                        "operator": "In",
                        "values": [UNREADABLE_EXIT],
                    },
                },
            ]
        },
        "template": {
            "metadata": {"labels": labels, "annotations": {MODEL_ANNOTATION: model}},
            "spec": pod,
        },
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {
            "name": job_name(name),
            "namespace": meta["namespace"],
            "labels": labels,
            "annotations": {MODEL_ANNOTATION: model},
            # deleting the ClipJob deletes its Job and so its pods (the garbage collector)
            "ownerReferences": [owner_reference(clipjob, JOB_KIND)],
        },
        "spec": job_spec,
    }
