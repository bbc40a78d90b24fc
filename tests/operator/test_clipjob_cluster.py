"""ClipJobs and the Manual swap against the real control plane (kube-apiserver, the real Job
controller and garbage collector, kwok nodes).

kwok runs no containers: a pod it places completes at once with exit code 0 and no message, and
a pod no node can take stays Pending. So these tests place the embedding pods nowhere and write
their pod status themselves (as the kubelet would: phase, exit code, termination message), and
the real Job controller turns that into completed or failed indexes. What `clipserve embed`
really prints and writes is tested on the real node (tests/realnode)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support.clipservices import clip, clipjob, condition, fully_ready, get, items, patch
from tests.support.cluster.harness import Cluster, KubectlError
from tests.support.running import OperatorRun, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.helm, pytest.mark.slow]

CPU_POOL = {"clipserve.io/node-pool": "cpu"}
NOWHERE = {"clipserve.io/node-pool": "nowhere"}  # no node: the pods wait, the test plays kubelet
A, B = "ViT-B-32:random", "ViT-B-16:random"
JOB_LABEL = "clipserve.io/clipjob"
S3 = {"url": "s3://corpus/photos", "endpoint": "http://minio.store:9000", "secretName": "store"}


def _clipjob(cluster: Cluster, ns: str, name: str, spec: dict[str, Any]) -> None:
    """A ClipJob over the S3 store unless `spec` says otherwise."""
    s3 = {"input": {"s3": S3}, "output": {"s3": {**S3, "url": "s3://corpus/vectors"}}}
    clipjob(cluster, ns, name, {**s3, **spec})


def _status(cluster: Cluster, ns: str, name: str) -> dict[str, Any]:
    return (get(cluster, "clipjob", name, ns) or {}).get("status") or {}


def _phase(cluster: Cluster, ns: str, name: str, phase: str) -> dict[str, Any] | None:
    status = _status(cluster, ns, name)
    return status if status.get("phase") == phase else None


def _finish(cluster: Cluster, ns: str, pod: dict[str, Any], code: int, message: str) -> None:
    """Write what a kubelet writes when the embed container exits."""
    stamp = "2026-01-01T00:00:00Z"
    terminated = {
        "exitCode": code,
        "reason": "Completed" if code == 0 else "Error",
        "message": message,
        "startedAt": stamp,
        "finishedAt": stamp,
    }
    status = {
        "phase": "Succeeded" if code == 0 else "Failed",
        "containerStatuses": [
            {
                "name": "embed",
                "image": pod["spec"]["containers"][0]["image"],
                "imageID": "",
                "ready": False,
                "restartCount": 0,
                "state": {"terminated": terminated},
            }
        ],
    }
    cluster.kubectl(
        "patch", "pod", pod["metadata"]["name"], "-n", ns, "--subresource=status",
        "--type", "merge", "-p", json.dumps({"status": status}),
    )  # fmt: skip


def _pods(cluster: Cluster, ns: str, name: str, n: int) -> list[dict[str, Any]] | None:
    found = [
        p
        for p in items(cluster, "pods", ns, f"{JOB_LABEL}={name}")
        if p["status"].get("phase") == "Pending"
    ]
    return sorted(found, key=_index) if len(found) == n else None


def _index(pod: dict[str, Any]) -> int:
    return int(pod["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"])


def _events(cluster: Cluster, ns: str, kind: str, name: str) -> list[tuple[str, str, str]]:
    out = cluster.kubectl(
        "get", "events", "-n", ns, "--field-selector",
        f"involvedObject.kind={kind},involvedObject.name={name}", "-o", "json",
    )  # fmt: skip
    return [(e["type"], e["reason"], e["message"]) for e in json.loads(out)["items"]]


def test_the_crd_refuses_what_a_clipjob_cannot_run(
    cluster: Cluster, running_operator: OperatorRun, ns: str
) -> None:
    for spec, words in (
        ({"model": A, "modelFrom": {"clipService": "x"}}, "exactly one of model, modelFrom"),
        ({}, "exactly one of model, modelFrom"),
        ({"model": A, "parallelism": 0}, "should be greater than or equal to 1"),
        ({"model": A, "output": {}}, "spec.output needs exactly one of pvc, s3"),
        ({"model": A, "modelCache": {"type": "shared"}}, "Unsupported value"),
    ):
        with pytest.raises(KubectlError, match=words):
            _clipjob(cluster, ns, "bad", spec)
    _clipjob(cluster, ns, "ok", {"model": A})
    with pytest.raises(KubectlError, match="a ClipJob's spec cannot change"):
        cluster.kubectl(
            "patch", "clipjob", "ok", "-n", ns, "--type", "merge",
            "-p", json.dumps({"spec": {"parallelism": 3}}),
        )  # fmt: skip


def test_a_clipjob_runs_as_an_indexed_job_and_reports_its_pods_summaries(
    cluster: Cluster, running_operator: OperatorRun, ns: str
) -> None:
    spec = {"model": A, "parallelism": 2, "nodePool": {"nodeSelector": NOWHERE}}
    _clipjob(cluster, ns, "corpus", spec)
    job = wait_for("the Job", lambda: get(cluster, "job", "corpus-embed", ns))
    assert job["spec"]["completionMode"] == "Indexed"
    assert (job["spec"]["completions"], job["spec"]["parallelism"]) == (2, 2)
    assert job["metadata"]["ownerReferences"][0]["kind"] == "ClipJob"
    [embed] = job["spec"]["template"]["spec"]["containers"]
    assert embed["command"][:4] == ["clipserve", "embed", "--model", A]
    env = {e["name"]: e for e in embed["env"]}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]["name"] == "store"
    # no node can take the pods: the scheduler's words
    status = wait_for("Pending with why", lambda: _phase(cluster, ns, "corpus", "Pending"))
    held = wait_for(
        "PodsReady", lambda: condition(get(cluster, "clipjob", "corpus", ns), "PodsReady")
    )
    assert "didn't match Pod's node affinity/selector" in held["message"]
    pods = wait_for("two pods", lambda: _pods(cluster, ns, "corpus", 2))
    for pod, items_ in zip(pods, (300, 211), strict=True):
        summary = {"event": "done", "shards": 3, "skipped": 0, "items": items_, "failed": 2}
        _finish(cluster, ns, pod, 0, json.dumps(summary))
    status = wait_for("Succeeded", lambda: _phase(cluster, ns, "corpus", "Succeeded"))
    assert (status["shardsDone"], status["slicesDone"]) == (6, 2)
    assert (status["itemsDone"], status["itemsFailed"]) == (511, 4)
    assert status["model"] == A and status["startTime"] and status["completionTime"]
    assert condition({"status": status}, "Complete")["status"] == "True"
    columns = cluster.kubectl("get", "clipjob", "corpus", "-n", ns)
    assert columns.split("\n")[0].split() == ["NAME", "MODEL", "PHASE", "PROGRESS", "RATE", "AGE"]
    assert "6/6 shards (100%)" in columns  # done: the total is what was published
    assert ("Normal", "Completed") in [e[:2] for e in _events(cluster, ns, "ClipJob", "corpus")]
    # deleting the ClipJob deletes its Job and pods (its output is in the bucket, untouched)
    cluster.kubectl("delete", "clipjob", "corpus", "-n", ns)
    wait_for("the Job gone", lambda: get(cluster, "job", "corpus-embed", ns) is None)
    wait_for("its pods gone", lambda: not items(cluster, "pods", ns, f"{JOB_LABEL}=corpus"))


def _failed(cluster: Cluster, ns: str, name: str, words: str) -> None:
    spec = {"model": B, "nodePool": {"nodeSelector": NOWHERE}, "backoffLimitPerIndex": 0}
    _clipjob(cluster, ns, name, {**spec, "promotes": {"clipService": "search"}})
    [pod] = wait_for("its pod", lambda: _pods(cluster, ns, name, 1))
    _finish(cluster, ns, pod, 1, f"loading {B}\n{words}")


def test_a_failed_pod_fails_the_clipjob_with_its_own_words(
    cluster: Cluster, running_operator: OperatorRun, ns: str
) -> None:
    words = "RuntimeError: Model config for ViT-B-16 not found"
    _failed(cluster, ns, "broken", words)
    status = wait_for("Failed", lambda: _phase(cluster, ns, "broken", "Failed"))
    failed = condition({"status": status}, "Failed")
    assert failed["status"] == "True" and failed["message"] == f"index 0: {words}"
    assert ("Warning", failed["reason"], failed["message"]) in _events(
        cluster, ns, "ClipJob", "broken"
    )


def _held(cluster: Cluster, ns: str, reason: str) -> dict[str, Any] | None:
    obj = get(cluster, "clip", "search", ns)
    held = condition(obj, "PromotionHeld")
    return obj if held.get("status") == "True" and held.get("reason") == reason else None


def _serving(cluster: Cluster, ns: str) -> str:
    service = get(cluster, "service", "search", ns) or {}
    return str(service["spec"]["selector"]["clipserve.io/slot"])


def test_a_manual_swap_waits_beside_the_old_slot_until_promoted(
    cluster: Cluster, running_operator: OperatorRun, ns: str
) -> None:
    manual = {"promotion": "Manual"}
    spec = {"model": A, "nodePool": {"nodeSelector": CPU_POOL}, "swap": manual}
    clip(cluster, ns, "search", spec)
    wait_for("Ready", lambda: fully_ready(cluster, ns, "search"))
    with pytest.raises(KubectlError, match="needs swapStrategy BlueGreen"):
        patch(cluster, ns, "search", {"swapStrategy": "Rolling"})
    patch(cluster, ns, "search", {"model": B})
    obj = wait_for("held", lambda: _held(cluster, ns, "AwaitingPromotion"))
    status = obj["status"]
    assert (status["activeModel"], status["pendingModel"]) == (A, B)
    assert status["pendingEndpoint"] == f"http://search-pending.{ns}.svc.cluster.local:3000"
    pending = get(cluster, "service", "search-pending", ns)
    assert pending is not None and pending["spec"]["selector"]["clipserve.io/slot"] == "green"
    assert _serving(cluster, ns) == "blue"
    assert condition(obj, "Ready")["status"] == "True"
    green = get(cluster, "deployment", "search-green", ns)
    assert green is not None and green["status"].get("readyReplicas") == 1

    # a failed re-embedding never promotes; it shows on the ClipService
    _failed(cluster, ns, "reembed-1", "botocore: NoSuchBucket")
    obj = wait_for("ClipJobFailed", lambda: _held(cluster, ns, "ClipJobFailed"))
    assert (
        "ClipJob reembed-1 failed: index 0: botocore: NoSuchBucket"
        in (condition(obj, "PromotionHeld")["message"])
    )
    assert obj["status"]["activeModel"] == A
    wait_for("the Service on blue", lambda: _serving(cluster, ns) == "blue")
    assert "ClipJobFailed" in [e[1] for e in _events(cluster, ns, "ClipService", "search")]

    # a ClipJob over the pending slot that completes moves the Service (kwok completes its pod)
    pending = {"clipService": "search", "slot": "pending"}
    _clipjob(
        cluster, ns, "reembed-2", {"modelFrom": pending, "promotes": {"clipService": "search"}}
    )
    done = wait_for("Succeeded", lambda: _phase(cluster, ns, "reembed-2", "Succeeded"))
    assert done["model"] == B
    obj = wait_for("promoted", lambda: fully_ready(cluster, ns, "search"))
    assert obj["status"]["activeModel"] == B
    # the status is written before the Service moves (a crash in between resumes forward)
    wait_for("the Service on green", lambda: _serving(cluster, ns) == "green")
    wait_for(
        "pending Service pruned", lambda: get(cluster, "service", "search-pending", ns) is None
    )

    def released() -> dict[str, Any] | None:
        obj = get(cluster, "clip", "search", ns)
        return obj if condition(obj, "PromotionHeld").get("status") == "False" else None

    obj = wait_for("PromotionHeld False", released)
    assert condition(obj, "PromotionHeld")["reason"] == "NotHeld"
    assert not obj["status"].get("pendingEndpoint")

    # back to A, promoted by hand this time
    patch(cluster, ns, "search", {"model": A})
    wait_for("held again", lambda: _held(cluster, ns, "AwaitingPromotion"))
    assert _serving(cluster, ns) == "green"
    patch(cluster, ns, "search", {"swap": {**manual, "promote": A}})
    obj = wait_for("promoted by hand", lambda: fully_ready(cluster, ns, "search"))
    assert obj["status"]["activeModel"] == A
    wait_for("the Service on blue", lambda: _serving(cluster, ns) == "blue")
