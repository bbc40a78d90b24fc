"""ClipJobs as real pods on the real node: `clipserve embed` from the service image over claims
that are host folders (the test reads the Parquet the pods wrote), with the operator in the
cluster from its image; and the Manual swap under a steady request stream."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from PIL import Image

from tests.realnode.conftest import (
    CHART_MARKS,
    LOAD_S,
    SMALL,
    A,
    B,
    assert_all_served,
    pinned_values,
    ready_with,
    small_clip,
)
from tests.support.clipservices import clip, clipjob, condition, get, items, patch
from tests.support.cluster.harness import Cluster
from tests.support.cluster.probe import LoadRun
from tests.support.cluster.realnode import RealNode
from tests.support.polling import eventually
from tests.support.volumes import Volume

pytestmark = CHART_MARKS

JOB_LABEL = "clipserve.io/clipjob"
TEXT = json.dumps([{"text": "a photo of a dog"}])


def _pictures(folder: Path, good: int, corrupt: int) -> None:
    """`good` small PNGs and `corrupt` files that only look like images."""
    for i in range(good):
        buf = io.BytesIO()
        Image.new("RGB", (32 + i % 7, 24), (i * 13 % 255, 80, 160)).save(buf, "PNG")
        (folder / f"img-{i:04d}.png").write_bytes(buf.getvalue())
    for i in range(corrupt):
        (folder / f"bad-{i:02d}.jpg").write_bytes(b"\xff\xd8\xff not a jpeg at all")


def _claim(cluster: Cluster, ns: str, volume: Volume) -> str:
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": volume.name, "namespace": ns},
        "spec": {
            "accessModes": ["ReadWriteMany"],
            "storageClassName": volume.name,
            "resources": {"requests": {"storage": "1Gi"}},
        },
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(claim))
    return volume.name


def _corpus_job(
    cluster: Cluster, ns: str, volume: Callable[..., Volume], good: int, corrupt: int, **spec: Any
) -> tuple[Volume, Volume]:
    """A ClipJob of model A over a folder of pictures on one claim, into another."""
    source, target = volume(), volume()
    _pictures(source.path, good, corrupt)
    clipjob(
        cluster,
        ns,
        "corpus",
        {
            "model": A,
            "dtype": "fp32",
            "device": "cpu",
            "nodePool": pinned_values(),
            "resources": SMALL,
            "input": {"pvc": {"claimName": _claim(cluster, ns, source)}},
            "output": {"pvc": {"claimName": _claim(cluster, ns, target), "path": "vectors"}},
            **spec,
        },
    )
    return source, target


def _phase(cluster: Cluster, ns: str, name: str, phase: str) -> dict[str, Any] | None:
    status = ((get(cluster, "clipjob", name, ns) or {}).get("status")) or {}
    if status.get("phase") == "Failed" and phase != "Failed":
        raise AssertionError(f"ClipJob {name} failed: {status}")
    return status if status.get("phase") == phase else None


def _ids(target: Volume) -> list[str]:
    out: list[str] = []
    for shard in sorted((target.path / "vectors" / "shards").glob("shard-*.parquet")):
        out += pq.read_table(shard).column("id").to_pylist()
    return out


def test_a_two_pod_clipjob_over_a_claim_completes_with_the_right_counts(
    cluster: Cluster,
    real_node: RealNode,
    operator_pod: str,
    ns: str,
    volume: Callable[..., Volume],
    measure: Callable[[str, float], None],
) -> None:
    t0 = time.time()
    _, target = _corpus_job(cluster, ns, volume, 22, 2, parallelism=2, shardSize=4)
    status = eventually(lambda: _phase(cluster, ns, "corpus", "Succeeded"), "Succeeded", LOAD_S)
    measure("clipjob: 24 pictures on 2 pods, apply -> Succeeded", time.time() - t0)
    assert (status["shardsDone"], status["shardsTotal"], status["slicesDone"]) == (6, 6, 2)
    assert (status["itemsDone"], status["itemsFailed"]) == (24, 2)
    assert condition({"status": status}, "Complete")["status"] == "True"
    ids = _ids(target)
    assert len(ids) == len(set(ids)) == 24
    manifests = sorted(p.name for p in (target.path / "vectors" / "manifest").iterdir())
    assert manifests == [f"shard-{k:05d}.json" for k in range(6)]
    run = json.loads((target.path / "vectors" / "run.json").read_text())
    assert run["model"] == A


def test_a_pod_deleted_midway_is_retried_and_nothing_is_written_twice(
    cluster: Cluster,
    real_node: RealNode,
    operator_pod: str,
    ns: str,
    volume: Callable[..., Volume],
    measure: Callable[[str, float], None],
) -> None:
    _, target = _corpus_job(cluster, ns, volume, 120, 0, parallelism=2, shardSize=4)

    def running_with_shards() -> list[dict[str, Any]] | None:
        status = _phase(cluster, ns, "corpus", "Running") or {}
        pods = [
            p
            for p in items(cluster, "pods", ns, f"{JOB_LABEL}=corpus")
            if p["status"].get("phase") == "Running"
        ]
        return pods if status.get("shardsDone", 0) >= 2 and pods else None

    pods = eventually(running_with_shards, "shards published", LOAD_S, every_s=0.5)
    victim = pods[0]["metadata"]["name"]
    index = pods[0]["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"]
    deleted = time.time()
    # as a node lost: no grace period in which the pod could finish its slice
    cluster.kubectl("delete", "pod", victim, "-n", ns, "--grace-period=0", "--force")
    status = eventually(lambda: _phase(cluster, ns, "corpus", "Succeeded"), "Succeeded", LOAD_S)
    measure("clipjob: pod killed -> job Succeeded", time.time() - deleted)
    ids = _ids(target)
    assert len(ids) == len(set(ids)) == 120, "an item written twice or missing"
    assert (status["shardsDone"], status["slicesDone"]) == (30, 2), status
    assert (status["itemsDone"], status["itemsFailed"]) == (120, 0), status
    # the index ran again in a new pod, which resumed after the shards the first published
    [successor] = [
        p["metadata"]["name"]
        for p in items(cluster, "pods", ns, f"{JOB_LABEL}=corpus")
        if p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"] == index
    ]
    assert successor != victim
    log = cluster.kubectl("logs", successor, "-n", ns)
    start = next(json.loads(ln) for ln in log.splitlines() if '"start"' in ln)
    assert start["skipped"] >= 1, log


def test_a_model_that_cannot_load_fails_the_clipjob_with_the_loaders_words(
    cluster: Cluster,
    real_node: RealNode,
    operator_pod: str,
    ns: str,
    volume: Callable[..., Volume],
) -> None:
    _corpus_job(cluster, ns, volume, 4, 0, model="ViT-Nope-99:random", backoffLimitPerIndex=0)
    status = eventually(lambda: _phase(cluster, ns, "corpus", "Failed"), "Failed", LOAD_S)
    failed = condition({"status": status}, "Failed")
    assert failed["status"] == "True"
    assert failed["message"].startswith("index 0: ") and "ViT-Nope-99" in failed["message"]


def test_a_manual_swap_serves_the_old_model_until_the_clipjob_completes_then_only_the_new(
    cluster: Cluster,
    real_node: RealNode,
    operator_pod: str,
    ns: str,
    client: str,
    volume: Callable[..., Volume],
    measure: Callable[[str, float], None],
) -> None:
    clip(cluster, ns, "swap", small_clip(A, None, swap={"promotion": "Manual"}))
    obj = ready_with(cluster, ns, "swap", A, 1)
    source, target = volume(), volume()
    _pictures(source.path, 16, 0)
    with LoadRun(real_node, ns, client, obj["status"]["endpoint"] + "/encode", TEXT) as load:
        load.wait_for(20)
        patch(cluster, ns, "swap", {"model": B})

        def held() -> dict[str, Any] | None:
            found = get(cluster, "clip", "swap", ns)
            cond = condition(found, "PromotionHeld")
            return found if cond.get("reason") == "AwaitingPromotion" else None

        eventually(held, "the new slot ready and held", LOAD_S)
        clipjob(
            cluster,
            ns,
            "reembed",
            {
                "modelFrom": {"clipService": "swap", "slot": "pending"},
                "promotes": {"clipService": "swap"},
                "input": {"pvc": {"claimName": _claim(cluster, ns, source)}},
                "output": {"pvc": {"claimName": _claim(cluster, ns, target)}},
            },
        )
        eventually(lambda: _phase(cluster, ns, "reembed", "Succeeded"), "re-embedded", LOAD_S)
        job_done = time.time()
        ready_with(cluster, ns, "swap", B, 1)
        eventually(
            lambda: all(
                p["metadata"]["name"].startswith("swap-green-")
                for p in items(cluster, "pods", ns, "clipserve.io/clipservice=swap")
            ),
            "the old slot's pods to be gone",
            LOAD_S,
        )
        done = time.time()
        load.wait_for(len(load.results) + 20)
        results = load.stop()
    assert_all_served(results, {A, B})
    assert {r.model for r in results if r.start < job_done} == {A}, "B served before the job"
    assert {r.model for r in results if r.start > done} == {B}
    first_b = min(r.start for r in results if r.model == B)
    last_a = max(r.start + r.ms / 1000 for r in results if r.model == A)
    measure("manual swap: ClipJob Succeeded -> old slot's pods gone", done - job_done)
    measure("manual swap: responses of both models interleaved for", max(0.0, last_a - first_b))
    # the stored vectors' space is the one the promoted slot serves, as both statuses say
    space = json.loads((target.path / "run.json").read_text())["space"]
    assert (get(cluster, "clipjob", "reembed", ns) or {})["status"]["space"] == space

    def serving_space() -> bool:
        found = get(cluster, "clip", "swap", ns) or {}
        return (found.get("status") or {}).get("activeSpace") == space

    eventually(serving_space, f"activeSpace {space}", LOAD_S)
