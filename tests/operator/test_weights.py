"""Weights fetched once: the shared claim, the prefetch Job built from a slot's real rendered
Deployment (real helm, real chart), where a model's weights stand, and what the status says."""

from __future__ import annotations

import copy
import json
from functools import partial
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from clipserve_operator.constants import MODEL_ANNOTATION, OWNER_LABEL, SLOT_LABEL
from clipserve_operator.errors import InvalidSpec
from clipserve_operator.render import chart_values, desired_objects, helm_template
from clipserve_operator.status import Observed, compute_status, transitions
from clipserve_operator.swap import SwapState
from clipserve_operator.weights import (
    Weights,
    cache_values,
    claim,
    dropped_image_volumes,
    image_mounts,
    parse_progress,
    prefetch_job,
    weights_state,
)

REPO = Path(__file__).resolve().parents[2]
CHART = str(REPO / "charts/clipserve")
OWNER = {"metadata": {"name": "search", "namespace": "ml", "uid": "1234"}}
A, B = "ViT-B-32:openai", "ViT-L-14:openai"
SHARED = {"type": "shared", "size": "20Gi"}
K8S = kubernetes_validate.utils.latest_version()


def _deployment(helm_bin: str, spec: dict[str, Any], model: str, slot: str = "blue") -> dict:
    values = chart_values("search", spec, model=model, slot=slot, service_slot=slot)
    rendered = helm_template(helm_bin, CHART, "search", "ml", values)
    return next(o for o in rendered if o["kind"] == "Deployment")


def test_a_shared_cache_is_a_read_only_claim_in_every_slot() -> None:
    spec = {"model": A, "modelCache": SHARED}
    assert cache_values("search", spec, A) == {
        "type": "existingClaim",
        "existingClaim": "search-weights",
        "readOnly": True,
    }
    mine = {"model": A, "modelCache": {**SHARED, "existingClaim": "team-weights"}}
    assert cache_values("search", mine, A)["existingClaim"] == "team-weights"


def test_the_operators_claim_is_read_write_many_unless_told_and_none_for_an_existing_one() -> None:
    made = claim("search", {"modelCache": SHARED})
    assert made is not None
    assert made["metadata"]["name"] == "search-weights"
    assert made["spec"] == {
        "accessModes": ["ReadWriteMany"],
        "resources": {"requests": {"storage": "20Gi"}},
    }
    rwo = claim("search", {"modelCache": {**SHARED, "accessModes": ["ReadWriteOnce"]}})
    assert rwo is not None and rwo["spec"]["accessModes"] == ["ReadWriteOnce"]
    assert claim("search", {"modelCache": {**SHARED, "existingClaim": "mine"}}) is None


def test_each_slot_mounts_the_model_image_of_its_own_model() -> None:
    images = {A: "reg/clip:a", B: "reg/clip:b"}
    spec = {"model": B, "modelCache": {"type": "image", "images": images}}
    for model in (A, B):
        image = cache_values("search", spec, model)["image"]
        assert image == {"reference": images[model], "pullPolicy": "IfNotPresent"}
    with pytest.raises(InvalidSpec, match="no model image for RN50:openai"):
        cache_values("search", spec, "RN50:openai")


def test_an_image_volume_counts_as_dropped_when_its_volume_or_any_mount_is_gone(
    helm_bin: str,
) -> None:
    # The real API server's drop is tested in test_image_volumes_cluster.py; here what counts.
    spec = {"model": A, "modelCache": {"type": "image", "images": {A: "reg/clip:a"}}}
    sent = _deployment(helm_bin, spec, A)
    assert ("", "cache") in image_mounts(sent) and len(image_mounts(sent)) >= 2
    stored = copy.deepcopy(sent)
    stored["spec"]["template"]["spec"]["dnsPolicy"] = "ClusterFirst"  # defaults added: kept
    assert dropped_image_volumes(sent, stored) == []
    pod = stored["spec"]["template"]["spec"]
    pod["containers"][0]["volumeMounts"] = [
        m for m in pod["containers"][0]["volumeMounts"] if m["name"] != "cache"
    ]
    assert dropped_image_volumes(sent, stored) == ["cache"]  # the mount alone is enough
    pod["volumes"] = [v for v in pod["volumes"] if v["name"] != "cache"]
    assert dropped_image_volumes(sent, stored) == ["cache"]
    assert image_mounts(_deployment(helm_bin, {"model": A, "modelCache": SHARED}, A)) == set()


def test_the_prefetch_job_is_the_slots_own_pod_running_clipserve_download(helm_bin: str) -> None:
    spec = {
        "model": A,
        "modelCache": SHARED,
        "gpu": {"count": 1},
        "nodePool": {"nodeSelector": {"pool": "gpu"}},
        "hfToken": {"secretName": "hf"},
        "values": {"extraEnv": [{"name": "CLIPSERVE_MODEL_CONFIG_DIR", "value": "/configs"}]},
    }
    deployment = _deployment(helm_bin, spec, A)
    server = deployment["spec"]["template"]["spec"]["containers"][0]
    job = prefetch_job("search", deployment)
    pod = job["spec"]["template"]["spec"]
    [download] = pod["containers"]
    assert download["command"] == [
        "clipserve", "download", "--model", A, "--cache-dir", "/cache", "--progress", "lines",
    ]  # fmt: skip
    assert download["image"] == server["image"]
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in download["env"]}
    assert env["HF_TOKEN"] == {"secretKeyRef": {"name": "hf", "key": "token"}}
    assert env["CLIPSERVE_MODEL_CONFIG_DIR"] == "/configs"
    assert "CLIPSERVE_OFFLINE" not in env and env["HF_HOME"] == "/tmp/hf"
    # the slot mounts the claim read-only; the Job writes it
    server_cache = next(v for v in deployment["spec"]["template"]["spec"]["volumes"])
    assert server_cache["persistentVolumeClaim"] == {
        "claimName": "search-weights",
        "readOnly": True,
    }
    assert pod["volumes"][0]["persistentVolumeClaim"] == {"claimName": "search-weights"}
    assert {"name": "cache", "mountPath": "/cache"} in download["volumeMounts"]
    # the slot's node pool and user, but no GPU and no serving parts
    assert pod["nodeSelector"] == {"pool": "gpu"}
    assert pod["securityContext"]["runAsUser"] == 10001
    assert "nvidia.com/gpu" not in str(download["resources"])
    assert "initContainers" not in pod and pod["restartPolicy"] == "Never"
    assert not {"readinessProbe", "ports", "lifecycle"} & set(download)
    assert job["metadata"]["annotations"][MODEL_ANNOTATION] == A
    [owned] = desired_objects([job], OWNER, autoscaling=False)
    assert owned["metadata"]["labels"][OWNER_LABEL] == "search"
    kubernetes_validate.validate(owned, K8S, strict=True)


def test_a_job_is_named_by_what_it_runs(helm_bin: str) -> None:
    spec = {"model": A, "modelCache": SHARED}
    render = partial(_deployment, helm_bin)
    first = prefetch_job("search", render(spec, A))["metadata"]["name"]
    assert first.startswith("search-weights-")
    assert prefetch_job("search", render(spec, A))["metadata"]["name"] == first  # stable
    # the same model in the other slot (a swap back) finds its Job, and its cache, done
    assert prefetch_job("search", render(spec, A, "green"))["metadata"]["name"] == first
    # another model, or a changed pod (a Job's template is immutable), is another Job
    assert prefetch_job("search", render(spec, B))["metadata"]["name"] != first
    newer = {**spec, "image": {"tag": "0.2.0"}}
    assert prefetch_job("search", render(newer, A))["metadata"]["name"] != first


def _job(condition: str = "") -> dict[str, Any]:
    conds = [{"type": condition, "status": "True", "reason": "BackoffLimitExceeded"}]
    return {"status": {"conditions": conds if condition else []}}


def _pod(**state: Any) -> dict[str, Any]:
    return {
        "metadata": {"creationTimestamp": "2026-01-01T00:00:00Z"},
        "status": {"containerStatuses": [{"state": state}]},
    }


def test_where_a_models_weights_stand_comes_from_its_job_pods_and_log() -> None:
    assert weights_state(A, None, "j", []).phase == "Pending"
    assert weights_state(A, _job("Complete"), "j", []).phase == "Ready"
    log = "fetching x\nprogress 100/1000 bytes (10%) 1.0 MB/s\nprogress 250/1000 bytes (25%)"
    running = weights_state(A, _job(), "j", [_pod(running={})], log)
    assert (running.phase, running.done, running.total) == ("Downloading", 250, 1000)
    assert running.summary() == f"{A}: 250/1000 bytes (25%)"
    said = "fetching x\nclipserve download: x: http://h/x.pt answered 404 Not Found\n"
    failed = weights_state(
        A, _job("Failed"), "j", [_pod(terminated={"exitCode": 1, "message": said})]
    )
    assert failed.phase == "Failed"
    assert (
        failed.message
        == "download failed: clipserve download: x: http://h/x.pt answered 404 Not Found"
    )
    unbound = {
        "metadata": {},
        "status": {
            "conditions": [
                {
                    "type": "PodScheduled",
                    "status": "False",
                    "reason": "Unschedulable",
                    "message": "pod has unbound immediate PersistentVolumeClaims",
                }
            ]
        },
    }
    waiting = weights_state(A, _job(), "j", [unbound])
    assert (
        waiting.phase == "Pending" and "unbound immediate PersistentVolumeClaims" in waiting.message
    )
    assert parse_progress("no progress yet") is None


def _status(state: SwapState, observed: Observed, weights: list[Weights]) -> dict[str, Any]:
    return compute_status(
        generation=2,
        state=state,
        observed=observed,
        endpoint="",
        selector="",
        slot_label=SLOT_LABEL,
        previous=None,
        now="2026-01-01T00:00:00Z",
        weights=weights,
    )


def _conditions(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in status["conditions"]}


def test_status_shows_the_prefetch_before_the_serving_slot_exists() -> None:
    fetching = Weights(A, "search-weights-1", "Downloading", 300, 1200)
    status = _status(SwapState("blue", A), Observed(active=None, pending=None), [fetching])
    conds = _conditions(status)
    assert conds["Ready"]["reason"] == "WeightsNotReady"
    assert f"{A}: 300/1200 bytes (25%)" in conds["Ready"]["message"]
    assert conds["WeightsReady"]["status"] == "False"
    assert conds["WeightsReady"]["reason"] == "Downloading"
    assert status["weights"] == [
        {
            "model": A,
            "job": "search-weights-1",
            "phase": "Downloading",
            "bytesDone": 300,
            "bytesTotal": 1200,
            "message": "",
        }
    ]


def test_a_swap_prefetches_first_and_a_failed_download_degrades_but_keeps_serving() -> None:
    serving = {"spec": {"replicas": 2}, "status": {"readyReplicas": 2}}
    state = SwapState("blue", A, "green", B)
    ready = Weights(A, "j1", "Ready", message="in the cache")
    status = _status(
        state,
        Observed(active=serving, pending=None),
        [ready, Weights(B, "j2", "Downloading", 5, 10)],
    )
    conds = _conditions(status)
    assert conds["Progressing"]["reason"] == "PrefetchingWeights"
    assert conds["Ready"]["status"] == "True"
    broken = Weights(B, "j2", "Failed", message="download failed: sha256 mismatch: expected 00")
    conds = _conditions(_status(state, Observed(active=serving, pending=None), [ready, broken]))
    assert conds["Degraded"]["status"] == "True"
    assert conds["Degraded"]["reason"] == "WeightsDownloadFailed"
    assert (
        conds["Degraded"]["message"]
        == f"weights of {B}: download failed: sha256 mismatch: expected 00"
    )
    assert conds["WeightsReady"]["reason"] == "DownloadFailed"
    assert conds["Ready"]["status"] == "True"  # the serving slot is untouched


# A checkpoint URL with credentials and a presigned query, and the words that must not show.
SECRET_URL = "https://alice7:s3cr3tpass@models.example/ckpt.pt?X-Amz-Signature=sig0nly4me"
SHOWN_URL = "https://***@models.example/ckpt.pt?***"
SECRETS = ("alice7", "s3cr3tpass", "sig0nly4me", "X-Amz-Signature")


def test_a_failed_download_of_a_url_with_credentials_is_shown_redacted() -> None:
    spec, shown = f"ViT-B-32:{SECRET_URL}", f"ViT-B-32:{SHOWN_URL}"
    # what a server that quotes the URL whole leaves as its prefetch pod's last words
    said = f"fetching\nclipserve download: {spec}: {SECRET_URL} answered 403 Forbidden\n"
    failed = weights_state(
        spec, _job("Failed"), "j2", [_pod(terminated={"exitCode": 1, "message": said})]
    )
    serving = {"spec": {"replicas": 2}, "status": {"readyReplicas": 2}}
    swap = _status(
        SwapState("blue", A, "green", spec),
        Observed(active=serving, pending=None),
        [Weights(A, "j1", "Ready", message="in the cache"), failed],
    )
    first = _status(
        SwapState("blue", spec),
        Observed(active=None, pending=None),
        [Weights(spec, "j2", "Downloading", 5, 10)],
    )
    for status in (swap, first):
        # activeModel/pendingModel persist the swap (they are spec.model, read back to render
        # the slots): whoever reads them reads the spec; everything else is shown text
        shown_parts = {k: v for k, v in status.items() if k not in ("activeModel", "pendingModel")}
        text = json.dumps(shown_parts) + json.dumps(transitions(None, status))
        for word in SECRETS:
            assert word not in text, (word, text)
    assert _conditions(swap)["Degraded"]["message"] == (
        f"weights of {shown}: download failed: clipserve download: {shown}: {SHOWN_URL} "
        "answered 403 Forbidden"
    )
    assert [w["model"] for w in swap["weights"]] == [A, shown]
    assert ("Normal", "SwapStarted", f"starting {shown} in slot green") in transitions(None, swap)
    assert _conditions(first)["Ready"]["message"].endswith(f"{shown}: 5/10 bytes (50%)")
