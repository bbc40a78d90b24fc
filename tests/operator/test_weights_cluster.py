"""A shared weights cache against the real control plane: the claim, a prefetch Job per model,
and no pod of a slot before its model's Job has succeeded (kwok completes Job pods without
running them, so the order is what is tested here; tests/realnode downloads for real)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pytest

from tests.support.clipservices import clip, condition, fully_ready, get, items, patch
from tests.support.cluster.harness import Cluster, KubectlError
from tests.support.running import OperatorRun, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.helm, pytest.mark.slow]

CPU_POOL = {"clipserve.io/node-pool": "cpu"}
OWNER_LABEL = "clipserve.io/clipservice"
MODEL = "clipserve.io/model"
A, B = "ViT-B-32:random", "ViT-B-16:random"


def _time(stamp: str) -> datetime:
    return datetime.fromisoformat(stamp.replace("Z", "+00:00"))


def _job_for(cluster: Cluster, ns: str, model: str) -> dict[str, Any] | None:
    jobs = items(cluster, "jobs", ns, f"{OWNER_LABEL}=cache")
    return next((j for j in jobs if j["metadata"]["annotations"][MODEL] == model), None)


def _created_after_its_job(cluster: Cluster, ns: str, deployment: str, model: str) -> None:
    job = _job_for(cluster, ns, model)
    dep = get(cluster, "deployment", deployment, ns)
    assert job is not None and dep is not None
    done = _time(job["status"]["completionTime"])
    assert _time(dep["metadata"]["creationTimestamp"]) >= done, (deployment, model)


def test_slots_start_only_after_their_models_weights_are_prefetched(
    cluster: Cluster, running_operator: OperatorRun, ns: str, volume: str
) -> None:
    cache = {"type": "shared", "size": "1Gi", "storageClassName": volume}
    spec = {"model": A, "replicas": 2, "nodePool": {"nodeSelector": CPU_POOL}, "modelCache": cache}
    clip(cluster, ns, "cache", spec)
    obj = wait_for("Ready", lambda: fully_ready(cluster, ns, "cache"))
    claim = get(cluster, "pvc", "cache-weights", ns)
    assert claim is not None and claim["spec"]["accessModes"] == ["ReadWriteMany"]
    assert claim["metadata"]["ownerReferences"][0]["name"] == "cache"
    _created_after_its_job(cluster, ns, "cache-blue", A)
    weights = condition(obj, "WeightsReady")
    assert weights["status"] == "True" and weights["reason"] == "Cached"
    assert [(w["model"], w["phase"]) for w in obj["status"]["weights"]] == [(A, "Ready")]
    # every serving pod mounts the claim read-only and downloads nothing
    for pod in items(cluster, "pods", ns, "clipserve.io/slot=blue"):
        volume_spec = next(v for v in pod["spec"]["volumes"] if v["name"] == "cache")
        assert volume_spec["persistentVolumeClaim"] == {
            "claimName": "cache-weights",
            "readOnly": True,
        }
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
        assert env["CLIPSERVE_OFFLINE"] == "true"
    [job] = items(cluster, "jobs", ns, f"{OWNER_LABEL}=cache")
    command = job["spec"]["template"]["spec"]["containers"][0]["command"]
    assert command[:4] == ["clipserve", "download", "--model", A]

    patch(cluster, ns, "cache", {"model": B})
    obj = wait_for("the swap", lambda: fully_ready(cluster, ns, "cache"))
    assert obj["status"]["activeModel"] == B
    _created_after_its_job(cluster, ns, "cache-green", B)
    # the old model's Job goes with its slot; the claim keeps both models' files
    wait_for("A's Job pruned", lambda: _job_for(cluster, ns, A) is None)

    def weights_of() -> list[str]:
        return [w["model"] for w in (get(cluster, "clip", "cache", ns) or {})["status"]["weights"]]

    wait_for("only B in status.weights", lambda: weights_of() == [B])


def test_a_model_without_its_model_image_is_refused_at_apply_time(
    cluster: Cluster, running_operator: OperatorRun, ns: str
) -> None:
    cache = {"type": "image", "images": {B: "registry.example.com/clip:b"}}
    with pytest.raises(KubectlError, match=r"modelCache\.images must name a model image"):
        clip(cluster, ns, "img", {"model": A, "modelCache": cache})
    clip(
        cluster,
        ns,
        "img",
        {"model": B, "modelCache": cache, "nodePool": {"nodeSelector": CPU_POOL}},
    )
    obj = wait_for("Ready", lambda: fully_ready(cluster, ns, "img"))
    # this API server keeps image volumes (1.36: the gate is locked on), so nothing is Degraded
    assert condition(obj, "Degraded")["reason"] == "AsExpected"
    pod = items(cluster, "pods", ns, f"{OWNER_LABEL}=img")[0]
    volume_spec = next(v for v in pod["spec"]["volumes"] if v["name"] == "cache")
    assert volume_spec["image"] == {
        "reference": "registry.example.com/clip:b",
        "pullPolicy": "IfNotPresent",
    }


def test_kubectl_explain_teaches_the_model_cache(
    cluster: Cluster, running_operator: OperatorRun
) -> None:
    text = cluster.kubectl("explain", "clipservice.spec.modelCache")
    for words in ("shared", "prefetch Job", "read-only", "model image", "air-gapped"):
        assert words in " ".join(text.split()), words
    for field in ("accessModes", "existingClaim", "images", "pullPolicy", "size", "type"):
        assert f"\n  {field}\t" in text or f"\n  {field} " in text, field
    images = " ".join(cluster.kubectl("explain", "clipservice.spec.modelCache.images").split())
    assert "Kubernetes 1.35+" in images and "containerd 2.1+" in images
