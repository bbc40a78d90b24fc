"""The ClipJob CRD, from the ClipService CRD's schema pieces: a ClipJob takes the same model,
GPU, node pool, resources, image and weights fields as a ClipService, and they stay one
definition (`charts/clipserve-operator/crds/clipservices.yaml` is the one to edit)."""

from __future__ import annotations

import copy
from typing import Any

import yaml

from .artefact import ROOT, Artefact

SOURCE = "charts/clipserve-operator/crds/clipservices.yaml"
TARGET = "charts/clipserve-operator/crds/clipjobs.yaml"
# The ClipService fields a ClipJob shares, as they are there.
SHARED = ("gpu", "nodePool", "resources", "image", "dtype", "device", "hfToken")
# A ClipJob's pods are not a ClipService's slots: no prefetch (shared) and no claim per job.
CACHE_TYPES = ["emptyDir", "existingClaim", "image"]
HEADER = (
    "# ClipJob: a corpus embedded by `clipserve embed` on the cluster (an Indexed Job).\n"
    f"# Generated from {SOURCE} (its shared fields) by `make generate`; do not edit:\n"
    "# edit scripts/generate/clipjob_crd.py or the ClipService CRD.\n"
)


def _s3(what: str) -> dict[str, Any]:
    return {
        "type": "object",
        "description": f"An S3-compatible bucket to {what} (MinIO, Ceph, the clouds').",
        "required": ["url"],
        "properties": {
            "url": {
                "type": "string",
                "pattern": "^s3://[^/]+(/.*)?$",
                "description": "s3://bucket/prefix",
            },
            "endpoint": {
                "type": "string",
                "description": "The store's URL (https://minio.store:9000); unset: AWS.",
            },
            "region": {"type": "string", "description": "The bucket's region, if it needs one."},
            "secretName": {
                "type": "string",
                "description": (
                    "Secret in the ClipJob's namespace with keys AWS_ACCESS_KEY_ID and "
                    "AWS_SECRET_ACCESS_KEY (and optionally AWS_SESSION_TOKEN), given to the "
                    "pods as variables; the operator never reads it."
                ),
            },
        },
    }


def _pvc(what: str) -> dict[str, Any]:
    return {
        "type": "object",
        "description": f"A folder on a PersistentVolumeClaim to {what}.",
        "required": ["claimName"],
        "properties": {
            "claimName": {
                "type": "string",
                "description": "The claim, in the ClipJob's namespace.",
            },
            "path": {
                "type": "string",
                "description": "The folder inside the claim ('' = its root).",
            },
        },
    }


def _one_of(keys: list[str], field: str) -> list[dict[str, str]]:
    sizes = " + ".join(f"(has(self.{k}) ? 1 : 0)" for k in keys)
    return [{"rule": f"{sizes} == 1", "message": f"{field} needs exactly one of {', '.join(keys)}"}]


def _spec(service: dict[str, Any]) -> dict[str, Any]:
    props = service["properties"]
    cache = copy.deepcopy(props["modelCache"])
    cache["properties"]["type"]["enum"] = CACHE_TYPES
    cache["description"] = (
        "Where the pods find their weights: emptyDir (each pod downloads them), existingClaim "
        "(your claim of weights), image (a model image per model, read-only). With modelFrom, "
        "the ClipService slot's own cache is used and this is ignored."
    )
    for key in ("size", "storageClassName", "accessModes"):
        cache["properties"].pop(key, None)
    model = copy.deepcopy(props["model"])
    model["description"] = "The open_clip model (as a ClipService's spec.model); or use modelFrom."
    text = "Column names of a list input (.jsonl, .csv, .parquet): "
    input_ = {
        "type": "object",
        "description": (
            "What to embed: a folder of images, a file of texts or image URLs/paths (.txt, .jsonl, "
            ".csv, .parquet) or WebDataset .tar shards, on a claim or in a bucket."
        ),
        "x-kubernetes-validations": _one_of(["pvc", "s3"], "spec.input"),
        "properties": {
            "pvc": _pvc("read (mounted read-only)"),
            "s3": _s3("read"),
            "idColumn": {"type": "string", "description": text + "the id."},
            "textColumn": {"type": "string", "description": text + "the text."},
            "imageColumn": {"type": "string", "description": text + "the image URL or path."},
        },
    }
    output = {
        "type": "object",
        "description": (
            "Where the Parquet shards, their manifest and run.json go. Deleting the ClipJob keeps "
            "them; a ClipJob run again over the same output skips the published shards."
        ),
        "x-kubernetes-validations": _one_of(["pvc", "s3"], "spec.output"),
        "properties": {"pvc": _pvc("write"), "s3": _s3("write")},
    }
    return {
        "type": "object",
        "description": "What to embed, with which model, where to, on how many pods.",
        "required": ["input", "output"],
        "x-kubernetes-validations": [
            *_one_of(["model", "modelFrom"], "spec"),
            # the ClipService's own rule for the fields it shares
            *[
                r
                for r in service.get("x-kubernetes-validations") or []
                if "existingClaim" in r["rule"]
            ],
            {
                "rule": "self == oldSelf",
                "message": "a ClipJob's spec cannot change; create another",
            },
        ],
        "properties": {
            "model": model,
            "modelFrom": {
                "type": "object",
                "description": (
                    "Embed with exactly the model, image, settings and weights cache of a "
                    "ClipService's slot: active (what it serves) or pending (the model a swap "
                    "is bringing up, to re-embed before it takes the traffic)."
                ),
                "required": ["clipService"],
                "properties": {
                    "clipService": {"type": "string", "description": "The ClipService's name."},
                    "slot": {
                        "type": "string",
                        "enum": ["active", "pending"],
                        "default": "active",
                        "description": "Which of its models.",
                    },
                },
            },
            "input": input_,
            "output": output,
            "parallelism": {
                "type": "integer",
                "format": "int32",
                "minimum": 1,
                "maximum": 1000,
                "default": 1,
                "description": (
                    "Pods at once, each owning the shards with shard % parallelism == its index."
                ),
            },
            "shardSize": {
                "type": "integer",
                "format": "int32",
                "minimum": 1,
                "description": "Items per Parquet shard (unset: clipserve embed's default).",
            },
            "backoffLimitPerIndex": {
                "type": "integer",
                "format": "int32",
                "minimum": 0,
                "default": 3,
                "description": (
                    "Failed pods an index may retry (each resumes from the published shards); "
                    "pods preempted or evicted do not count."
                ),
            },
            "promotes": {
                "type": "object",
                "description": (
                    "A ClipService whose Manual swap may move its traffic once this ClipJob "
                    "completes with the ClipService's pending model; a failed one never does."
                ),
                "required": ["clipService"],
                "properties": {
                    "clipService": {"type": "string", "description": "The ClipService's name."}
                },
            },
            **{key: copy.deepcopy(props[key]) for key in SHARED},
            "modelCache": cache,
        },
    }


def _int(description: str) -> dict[str, Any]:
    return {"type": "integer", "format": "int64", "description": description}


def _status(service: dict[str, Any]) -> dict[str, Any]:
    conditions = copy.deepcopy(service["properties"]["conditions"])
    conditions["description"] = (
        "Complete (True once every slice succeeded) and Failed (True when the Job failed, with "
        "the pods' own words; False/Retrying while a failed pod's index is retried); "
        "PodsReady False while pods cannot start (scheduling, image pull)."
    )
    text = {"type": "string"}
    return {
        "type": "object",
        "description": "Observed state, written by the operator.",
        "properties": {
            "observedGeneration": _int("The spec generation this status describes."),
            "phase": {
                "type": "string",
                "enum": ["Pending", "Running", "Succeeded", "Failed"],
                "description": "Where the ClipJob stands.",
            },
            "model": {**text, "description": "The model the Job embeds with (fixed at creation)."},
            "space": {
                **text,
                "description": (
                    "The embedding-space digest its pods embed in (as X-Clip-Space and run.json); "
                    "a held swap is promoted by this ClipJob only when it equals the "
                    "ClipService's pendingSpace."
                ),
            },
            "job": {**text, "description": "The Indexed Job running clipserve embed."},
            "shardsDone": _int("Shards published."),
            "shardsTotal": _int("Shards of the whole input (0 until a pod has said)."),
            "slicesDone": _int("Indexes (slices) that completed."),
            "slices": _int("Indexes (slices): spec.parallelism."),
            "itemsDone": _int("Items in published shards, failed ones included."),
            "itemsFailed": _int("Items with no vector (their error column says why)."),
            "itemsPerSecond": {"type": "number", "description": "Items/s of the running pods."},
            "sliceProgress": {
                "type": "array",
                "description": (
                    "Each slice (Job index) as far as its pods have reported: published shards, "
                    "items and failed items; never less than reported before."
                ),
                "items": {
                    "type": "object",
                    "properties": {
                        "index": _int("The Job's completion index."),
                        "shards": _int("Shards of this slice published."),
                        "items": _int("Items in them."),
                        "failed": _int("Items with no vector."),
                    },
                },
            },
            "etaSeconds": _int("Seconds left at the pace so far."),
            "progress": {**text, "description": "shardsDone/shardsTotal, for kubectl get."},
            "rate": {**text, "description": "Items/s and ETA, for kubectl get."},
            "startTime": {**text, "format": "date-time", "description": "When the Job started."},
            "completionTime": {
                **text,
                "format": "date-time",
                "description": "When the Job completed or failed.",
            },
            "conditions": conditions,
        },
    }


def crd() -> str:
    """The ClipJob CRD, as YAML."""
    source = yaml.safe_load((ROOT / SOURCE).read_text(encoding="utf-8"))
    version = source["spec"]["versions"][0]
    schema = version["schema"]["openAPIV3Schema"]["properties"]
    doc = {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": "clipjobs.clipserve.io",
            "labels": source["metadata"]["labels"],
            "annotations": source["metadata"]["annotations"],
        },
        "spec": {
            "group": "clipserve.io",
            "scope": "Namespaced",
            "names": {
                "kind": "ClipJob",
                "listKind": "ClipJobList",
                "plural": "clipjobs",
                "singular": "clipjob",
                "shortNames": ["cj"],
                "categories": ["clipserve"],
            },
            "versions": [
                {
                    "name": version["name"],
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        {"name": "Model", "type": "string", "jsonPath": ".status.model"},
                        {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
                        {"name": "Progress", "type": "string", "jsonPath": ".status.progress"},
                        {"name": "Rate", "type": "string", "jsonPath": ".status.rate"},
                        {
                            "name": "Space",
                            "type": "string",
                            "jsonPath": ".status.space",
                            "priority": 1,
                        },
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "description": (
                                "ClipJob embeds a whole corpus with clipserve embed on the "
                                "cluster: an Indexed Job whose pods each embed a slice of the "
                                "shards into resumable Parquet, and that can let a ClipService's "
                                "held swap move once the vectors are in the new space."
                            ),
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": _spec(schema["spec"]),
                                "status": _status(schema["status"]),
                            },
                        }
                    },
                }
            ],
        },
    }
    return HEADER + yaml.safe_dump(doc, sort_keys=False, width=100)


CLIPJOB_CRD = Artefact(TARGET, SOURCE, crd)
ARTEFACTS = [CLIPJOB_CRD]
