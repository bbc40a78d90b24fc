"""ClipJob's pure parts: the Indexed Job built from a server pod, progress from the pods' own
reports, and the status and events."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
from clipserve_operator.clipjob.job import embed_job, job_name
from clipserve_operator.clipjob.progress import collect, events, parse_indexes, progress_of
from clipserve_operator.clipjob.status import compute_status, eta_seconds, transitions
from clipserve_operator.constants import CLIPJOB_LABEL, MODEL_ANNOTATION, OWNER_LABEL, SLOT_LABEL
from clipserve_operator.errors import InvalidSpec
from clipserve_operator.render import chart_values, helm_template

REPO = Path(__file__).resolve().parents[2]
CHART = str(REPO / "charts/clipserve")
A = "ViT-B-32:openai"
K8S = kubernetes_validate.utils.latest_version()
NOW = "2026-01-01T00:10:00Z"


def _deployment(helm_bin: str, spec: dict[str, Any]) -> dict[str, Any]:
    values = chart_values("search", spec, model=A, slot="green", service_slot="blue")
    rendered = helm_template(helm_bin, CHART, "search", "ml", values)
    return next(o for o in rendered if o["kind"] == "Deployment")


def _clipjob(**spec: Any) -> dict[str, Any]:
    base = {
        "modelFrom": {"clipService": "search", "slot": "pending"},
        "input": {"pvc": {"claimName": "photos", "path": "/2024/"}},
        "output": {"pvc": {"claimName": "vectors", "path": "run-1"}},
        "parallelism": 2,
    }
    return {"metadata": {"name": "reembed", "namespace": "ml", "uid": "u-1"}, "spec": base | spec}


def test_the_job_is_indexed_over_the_slots_own_pod_running_clipserve_embed(helm_bin: str) -> None:
    spec = {
        "model": A,
        "gpu": {"count": 1},
        "nodePool": {"nodeSelector": {"pool": "gpu"}},
        "hfToken": {"secretName": "hf"},
        "modelCache": {"type": "existingClaim", "existingClaim": "weights"},
    }
    deployment = _deployment(helm_bin, spec)
    server = deployment["spec"]["template"]["spec"]["containers"][0]
    job = embed_job(_clipjob(shardSize=512), deployment, A)
    kubernetes_validate.validate(job, K8S, strict=True)
    assert job["metadata"]["name"] == job_name("reembed") == "reembed-embed"
    assert job["metadata"]["ownerReferences"][0]["uid"] == "u-1"
    assert job["metadata"]["ownerReferences"][0]["kind"] == "ClipJob"
    spec_ = job["spec"]
    assert (spec_["completionMode"], spec_["completions"], spec_["parallelism"]) == (
        "Indexed",
        2,
        2,
    )
    assert spec_["backoffLimitPerIndex"] == 3
    ignore, fail = spec_["podFailurePolicy"]["rules"]
    assert ignore["onPodConditions"] == [{"type": "DisruptionTarget"}]
    assert (fail["action"], fail["onExitCodes"]["values"]) == ("FailIndex", [2])
    pod = spec_["template"]["spec"]
    [embed] = pod["containers"]
    assert embed["command"] == [
        "clipserve", "embed", "--model", A, "/input/2024", "--output", "/output/run-1",
        "--progress", "lines", "--shard-size", "512",
    ]  # fmt: skip
    assert embed["image"] == server["image"]
    assert embed["resources"] == server["resources"]  # the GPU goes with it
    assert "nvidia.com/gpu" in json.dumps(embed["resources"])
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in embed["env"]}
    assert env["CLIPSERVE_EMBED_SLICES"] == "2"
    assert env["HF_TOKEN"] == {"secretKeyRef": {"name": "hf", "key": "token"}}
    assert env["CLIPSERVE_CACHE_DIR"] == "/cache" and "CLIPSERVE_MODEL" not in env
    mounts = {m["name"]: m for m in embed["volumeMounts"]}
    assert mounts["embed-input"]["readOnly"] and not mounts["embed-output"]["readOnly"]
    assert mounts["cache"]["mountPath"] == "/cache"
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["embed-input"]["persistentVolumeClaim"] == {
        "claimName": "photos",
        "readOnly": True,
    }
    assert volumes["embed-output"]["persistentVolumeClaim"] == {
        "claimName": "vectors",
        "readOnly": False,
    }
    assert volumes["cache"]["persistentVolumeClaim"]["claimName"] == "weights"
    # the slot's node pool and user, none of its serving parts
    assert pod["nodeSelector"] == {"pool": "gpu"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["automountServiceAccountToken"] is False
    assert not {"readinessProbe", "livenessProbe", "ports", "lifecycle"} & set(embed)
    assert "initContainers" not in pod and pod["restartPolicy"] == "Never"
    assert embed["terminationMessagePolicy"] == "FallbackToLogsOnError"
    # never selected by the ClipService's Service, nor seen by its reconcile
    labels = spec_["template"]["metadata"]["labels"]
    assert labels[CLIPJOB_LABEL] == "reembed"
    assert OWNER_LABEL not in labels and SLOT_LABEL not in labels
    assert labels["app.kubernetes.io/name"] != server_labels(deployment)["app.kubernetes.io/name"]
    assert job["metadata"]["annotations"][MODEL_ANNOTATION] == A


def server_labels(deployment: dict[str, Any]) -> dict[str, str]:
    return dict(deployment["spec"]["template"]["metadata"]["labels"])


def test_s3_credentials_reach_the_pods_as_secret_references_only(helm_bin: str) -> None:
    s3 = {"url": "s3://vectors/run-1", "endpoint": "http://minio:9000", "secretName": "store"}
    job = embed_job(_clipjob(output={"s3": s3}), _deployment(helm_bin, {"model": A}), A)
    [embed] = job["spec"]["template"]["spec"]["containers"]
    assert embed["command"][-4:-2] == ["--output", "s3://vectors/run-1"]
    env = {e["name"]: e for e in embed["env"]}
    assert env["AWS_ENDPOINT_URL"]["value"] == "http://minio:9000"
    assert env["AWS_ACCESS_KEY_ID"]["valueFrom"] == {
        "secretKeyRef": {"name": "store", "key": "AWS_ACCESS_KEY_ID"}
    }
    assert env["AWS_SESSION_TOKEN"]["valueFrom"]["secretKeyRef"]["optional"] is True
    assert "embed-output" not in json.dumps(job)
    other = {"url": "s3://photos", "endpoint": "http://other:9000", "secretName": "other"}
    with pytest.raises(InvalidSpec, match="different stores"):
        embed_job(
            _clipjob(input={"s3": other}, output={"s3": s3}), _deployment(helm_bin, {"model": A}), A
        )


def _pod(index: int, name: str, phase: str, *, code: int | None = None, message: str = "") -> dict:
    state = {"terminated": {"exitCode": code, "message": message}} if code is not None else {}
    return {
        "metadata": {
            "name": name,
            "creationTimestamp": f"2026-01-01T00:0{index}:{len(name):02d}Z",
            "annotations": {"batch.kubernetes.io/job-completion-index": str(index)},
        },
        "status": {"phase": phase, "containerStatuses": [{"name": "embed", "state": state}]},
    }


def _line(**event: Any) -> str:
    return json.dumps(event)


def test_shard_lines_count_once_per_shard_and_a_summary_completes_its_slice() -> None:
    start = _line(event="start", total_shards=6, slice="0/2", todo=3, skipped=0)
    shard0 = _line(event="shard", shard=0, items=100, failed=1, items_per_s=50.0)
    log0 = "\n".join([start, "warning: unrelated", shard0, "{not json", shard0])
    log0 += "\n" + _line(event="shard", shard=2, items=100, failed=0, items_per_s=60.0)
    # index 1: its first pod was deleted after shard 1 (its line was read); the next pod
    # skipped it, published shards 3 and 5 (one line never read) and summed up
    first = _line(event="shard", shard=1, items=100, failed=0, items_per_s=40.0)
    second = _line(event="shard", shard=3, items=100, failed=1, items_per_s=40.0)
    summary = _line(event="done", shards=2, skipped=1, items=190, failed=2)
    pods = [
        _pod(0, "a-0-x", "Running"),
        _pod(1, "a-1-y", "Failed", code=137, message=""),
        _pod(1, "a-1-zz", "Succeeded", code=0),
    ]
    logs = {"a-0-x": log0, "a-1-y": first, "a-1-zz": f"{start}\n{second}\n{summary}"}
    indexes, total = collect(pods, logs, "embed")
    progress = progress_of(indexes, total)
    assert (progress.shards_done, progress.shards_total) == (5, 6)
    # 200 (index 0) + 100 (the deleted pod's shard) + 190 (the summary: 100 seen + 90 not)
    assert (progress.items_done, progress.items_failed) == (490, 3)
    assert progress.items_per_s == 60.0  # the running pod's last shard
    # the summary may come as the termination message instead of the log
    pods[2]["status"]["containerStatuses"][0]["state"]["terminated"]["message"] = summary
    indexes, _ = collect(pods, {**logs, "a-1-zz": ""}, "embed")
    assert indexes[1].totals() == (3, 290, 2)
    assert events("plain line\n" + _line(event="done")) == [{"event": "done"}]
    assert parse_indexes("0-2,5") == {0, 1, 2, 5} and parse_indexes(None) == set()


def _job(conditions: list[dict[str, Any]] | None = None, **status: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "reembed-embed"},
        "spec": {"completions": 2},
        "status": {"startTime": "2026-01-01T00:00:00Z", "conditions": conditions or [], **status},
    }


def _status(
    job: dict | None,
    pods: list[dict],
    logs: dict[str, str],
    previous: dict | None = None,
    **kw: Any,
) -> dict[str, Any]:
    indexes, total = collect(pods, logs, "embed")
    return compute_status(
        generation=1, model=A, job=job, pods=pods, progress=progress_of(indexes, total),
        previous=previous, now=NOW, **kw,
    )  # fmt: skip


def _cond(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == type_)


def test_a_running_job_shows_progress_rate_and_eta() -> None:
    log = _line(event="shard", shard=0, items=100, failed=2, items_per_s=25.0, total_shards=4)
    status = _status(
        _job(active=2), [_pod(0, "p0", "Running"), _pod(1, "p1", "Running")], {"p0": log}
    )
    assert status["phase"] == "Running"
    assert (status["shardsDone"], status["shardsTotal"], status["itemsDone"]) == (1, 4, 100)
    assert status["progress"] == "1/4 shards (25%)"
    # 600 s for 1 shard: 3 left take 1800 s
    assert status["etaSeconds"] == 1800 and status["rate"] == "25.0 items/s, ETA 30m00s"
    assert _cond(status, "Complete")["status"] == "False"
    assert status["model"] == A and status["job"] == "reembed-embed"
    # the space a pod said is kept when a later reading has none (its log rotated)
    assert status["space"] == ""
    said = _status(_job(active=2), [], {}, space="sha256:" + "c" * 64)["space"]
    kept = _status(_job(active=2), [], {}, previous={"space": said})
    assert kept["space"] == said == "sha256:" + "c" * 64


def test_a_failed_job_quotes_its_pods_and_posts_a_warning() -> None:
    words = "loading model\nValueError: Model config for ViT-X-99 not found"
    pods = [_pod(0, "p0", "Failed", code=1, message=words), _pod(1, "p1", "Succeeded", code=0)]
    failed = {
        "type": "Failed",
        "status": "True",
        "reason": "FailedIndexes",
        "message": "Job has failed indexes",
    }
    status = _status(_job([failed], failedIndexes="0", completedIndexes="1"), pods, {})
    assert status["phase"] == "Failed"
    cond = _cond(status, "Failed")
    assert (cond["status"], cond["reason"]) == ("True", "FailedIndexes")
    assert cond["message"] == "index 0: ValueError: Model config for ViT-X-99 not found"
    assert ("Warning", "FailedIndexes", cond["message"]) in transitions({}, status)
    assert transitions(status, status) == []


def test_a_complete_job_says_so_once_and_a_retried_pod_is_a_warning() -> None:
    retried = _status(_job(active=1), [_pod(0, "p0", "Failed", code=137, message="Killed")], {})
    assert (_cond(retried, "Failed")["status"], _cond(retried, "Failed")["reason"]) == (
        "False",
        "Retrying",
    )
    assert transitions({}, retried)[0][:2] == ("Warning", "Retrying")
    done = {"type": "Complete", "status": "True", "reason": "CompletionsReached"}
    summary = _line(event="done", shards=2, skipped=0, items=200, failed=0)
    pods = [
        _pod(0, "p0", "Succeeded", code=0, message=summary),
        _pod(1, "p1", "Succeeded", code=0, message=summary),
    ]
    status = _status(
        _job([done], completedIndexes="0-1", completionTime=NOW), pods, {}, previous=retried
    )
    assert status["phase"] == "Succeeded" and status["completionTime"] == NOW
    assert (status["itemsDone"], status["slicesDone"], status["etaSeconds"]) == (400, 2, None)
    assert ("Normal", "Completed") in [t[:2] for t in transitions(retried, status)]


def test_no_job_yet_says_why() -> None:
    status = _status(None, [], {}, waiting="ClipService search has no pending model")
    assert status["phase"] == "Pending" and status["progress"] == "Pending"
    assert _cond(status, "Complete")["message"] == "ClipService search has no pending model"


def test_eta_needs_a_total_and_a_first_shard() -> None:
    from clipserve_operator.clipjob.progress import Progress

    assert eta_seconds(Progress(0, 10, 0, 0, 0.0), "2026-01-01T00:00:00Z", NOW) is None
    assert eta_seconds(Progress(5, 0, 0, 0, 0.0), "2026-01-01T00:00:00Z", NOW) is None
    assert eta_seconds(Progress(5, 10, 0, 0, 0.0), "2026-01-01T00:00:00Z", NOW) == 600


def test_a_slice_never_counts_less_than_it_was_seen_to_have_published() -> None:
    from clipserve_operator.clipjob.progress import slices

    shard = _line(event="shard", shard=0, items=100, failed=1, items_per_s=5.0)
    pods = [_pod(0, "p0", "Succeeded", code=0), _pod(1, "p1", "Succeeded", code=0)]
    first = slices(
        collect(pods, {"p0": shard, "p1": shard.replace('"shard": 0', '"shard": 1')}, "embed")[0]
    )
    assert first == [
        {"index": 0, "shards": 1, "items": 100, "failed": 1},
        {"index": 1, "shards": 1, "items": 100, "failed": 1},
    ]
    # a later reading lost p1's log (the kubelet out of reach, the pod gone): kept from before
    indexes, total = collect(pods, {"p0": shard}, "embed")
    assert slices(indexes, first) == first
    assert progress_of(indexes, total, first).items_done == 200
    status = _status(_job(active=1), pods, {"p0": shard}, slice_progress=slices(indexes, first))
    assert status["sliceProgress"] == first


def test_a_summary_with_the_skipped_shards_items_is_exact() -> None:
    summary = _line(
        event="done", shards=2, skipped=3, items=8, failed=1, skipped_items=12, skipped_failed=2
    )
    pods = [_pod(0, "p0", "Succeeded", code=0, message=summary)]
    indexes, _ = collect(pods, {}, "embed")
    assert indexes[0].totals() == (5, 20, 3)
