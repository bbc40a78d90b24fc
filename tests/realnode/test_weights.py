"""Weights fetched once per ClipService, on the real node: real pods, a real claim, real downloads.

Checkpoints are saved here from random-init open_clip models and served by a local HTTP server
on the node's bridge address (tests/support/origin.py), which the pods reach like a model
mirror and which counts every request. The claim is a static hostPath PersistentVolume of a
storage class of the test's own: the test cluster has no dynamic provisioner, and a hostPath
volume on the one real node is what a ReadWriteMany claim is to pods on one node. The full
volume is a tmpfs of a fixed size mounted on the host (the tests run as root for the node).
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import Any

import open_clip
import pytest
import torch

from tests.realnode.conftest import CHART_MARKS, helm_on, pinned_values, small_clip
from tests.support.clipservices import clip, condition, epoch_seconds, get, items, patch
from tests.support.cluster.harness import REPO, Cluster
from tests.support.cluster.realnode import RealNode
from tests.support.origin import Origin
from tests.support.polling import eventually
from tests.support.rendering import Helm
from tests.support.volumes import Volume

pytestmark = CHART_MARKS

OWNER_LABEL = "clipserve.io/clipservice"
LOAD_S = 600  # bounds waits for model loads on a shared 2-core machine; measures nothing
ARCH = "ViT-S-32-alt"  # open_clip's smallest plain ViT: 41 M parameters, 82 MB in fp16
# The cold-start measurement's model and link: ViT-B-32 (151 M parameters, 300 MB in fp16)
# over one shared 25 MB/s link (200 Mbit/s), a cluster's egress to the hub.
BENCH_ARCH, BENCH_RATE = "ViT-B-32", 25e6
TEXT = json.dumps([{"text": "a photo of a dog"}])


def checkpoint(arch: str, seed: int) -> bytes:
    """A random-init model's state dict in fp16, as torch.save writes it."""
    torch.manual_seed(seed)
    model = open_clip.create_model(arch, pretrained=None)
    buf = io.BytesIO()
    torch.save({k: v.half() for k, v in model.state_dict().items()}, buf)
    return buf.getvalue()


def spec_for(data: bytes, url: str) -> str:
    """The model spec of a served checkpoint, sha256 pinned."""
    return f"{url}#sha256={hashlib.sha256(data).hexdigest()}"


@pytest.fixture(scope="module")
def mirror(real_node: RealNode) -> Iterator[Origin]:
    """The model mirror on the node's bridge address, where pods reach it."""
    with Origin(host=real_node.ip) as origin:
        yield origin


def serve(origin: Origin, path: str, data: bytes) -> str:
    """Serve a checkpoint with Range support and a strong ETag; its URL."""
    etag = f'"{hashlib.sha256(data).hexdigest()[:16]}"'
    return origin.add(path, data, ranges=True, headers={"ETag": etag})


def gets(origin: Origin, path: str) -> list[str]:
    """The addresses that GET path."""
    return [r.client for r in origin.requests if r.path == path and r.method == "GET"]


@pytest.fixture(scope="module")
def models(mirror: Origin) -> dict[str, str]:
    """Specs of two checkpoints of ARCH (a, b) served by the mirror, sha256 pinned."""
    found = {}
    for seed, name in enumerate(("a", "b")):
        data = checkpoint(ARCH, seed)
        found[name] = f"{ARCH}:{spec_for(data, serve(mirror, f'/{name}.pt', data))}"
    return found


def spec(model: str, replicas: int = 1, cache: dict[str, Any] | None = None) -> dict[str, Any]:
    """A small CPU ClipService pinned to the real node."""
    out = small_clip(model, replicas)
    if cache is not None:
        out["modelCache"] = cache
    return out


def shared(v: Volume) -> dict[str, Any]:
    """spec.modelCache for a claim on volume v."""
    return {"type": "shared", "storageClassName": v.name, "size": "64Mi"}


def serving(cluster: Cluster, ns: str, name: str, model: str, replicas: int) -> dict[str, Any]:
    """Wait until the ClipService serves model from `replicas` ready pods, none left over."""

    def done() -> dict[str, Any] | None:
        obj = get(cluster, "clip", name, ns)
        status = (obj or {}).get("status") or {}
        pods = items(
            cluster, "pods", ns, f"{OWNER_LABEL}={name},app.kubernetes.io/component=server"
        )
        ok = (
            obj is not None
            and status.get("observedGeneration") == obj["metadata"]["generation"]
            and status.get("activeModel") == model
            and not status.get("pendingModel")
            and status.get("readyReplicas") == replicas
            and condition(obj, "Ready").get("status") == "True"
            and len(pods) == replicas
        )
        return obj if ok else None

    return eventually(done, f"{name} serving {model} from {replicas} pods", LOAD_S)


def server_pods(cluster: Cluster, ns: str, name: str) -> list[dict[str, Any]]:
    return items(cluster, "pods", ns, f"{OWNER_LABEL}={name},app.kubernetes.io/component=server")


def assert_reads_the_cache_read_only_offline(pod: dict[str, Any], claim: str) -> None:
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "cache")
    assert volume["persistentVolumeClaim"] == {"claimName": claim, "readOnly": True}
    server = pod["spec"]["containers"][0]
    assert {"name": "cache", "mountPath": "/cache", "readOnly": True} in server["volumeMounts"]
    env = {e["name"]: e.get("value") for e in server["env"]}
    assert env["CLIPSERVE_OFFLINE"] == "true"


def encode_model(node: RealNode, ns: str, client: str, endpoint: str) -> str:
    """The model that answers /encode at endpoint (X-Clip-Model), after a 200."""
    status_line = node.exec(ns, client, "/probe", "post", f"{endpoint}/encode", TEXT).split("\n")[0]
    code, _, model = status_line.partition(" ")
    assert code == "200", status_line
    return model


def test_every_replica_and_a_swap_read_weights_fetched_once_into_the_shared_claim(
    cluster: Cluster,
    real_node: RealNode,
    operator_pod: str,
    ns: str,
    client: str,
    mirror: Origin,
    models: dict[str, str],
    volume: Callable[..., Volume],
) -> None:
    a, b = models["a"], models["b"]
    v = volume()
    clip(cluster, ns, "cached", spec(a, replicas=3, cache=shared(v)))
    obj = serving(cluster, ns, "cached", a, 3)
    # fetched exactly once, by the prefetch Job's pod; the three servers fetched nothing
    [job] = items(cluster, "jobs", ns, f"{OWNER_LABEL}=cached")
    job_pod = items(cluster, "pods", ns, f"job-name={job['metadata']['name']}")[0]
    assert gets(mirror, "/a.pt") == [job_pod["status"]["podIP"]]
    pods = server_pods(cluster, ns, "cached")
    for pod in pods:
        assert_reads_the_cache_read_only_offline(pod, "cached-weights")
        log = cluster.kubectl("logs", "-n", ns, pod["metadata"]["name"], "-c", "clipserve")
        assert "fetching" not in log and "progress" not in log
    job_log = cluster.kubectl("logs", "-n", ns, job_pod["metadata"]["name"])
    size = len(mirror.routes["/a.pt"].body)  # type: ignore[arg-type]
    assert f"progress {size}/{size} bytes (100%)" in job_log
    assert [p.name for p in v.files()] == ["a.pt"]  # verified, moved in place, no .part left
    assert obj["status"]["weights"][0] | {"job": ""} == {
        "model": a, "job": "", "phase": "Ready", "bytesDone": 0, "bytesTotal": 0,
        "message": "in the cache",
    }  # fmt: skip
    assert encode_model(real_node, ns, client, obj["status"]["endpoint"]) == a
    # a scale-up reads the cache too
    cluster.kubectl("scale", "clipservice/cached", "-n", ns, "--replicas=4")
    serving(cluster, ns, "cached", a, 4)
    assert len(gets(mirror, "/a.pt")) == 1

    # a swap: B's weights are in the claim before the new slot's pods exist
    patch(cluster, ns, "cached", {"model": b, "replicas": 1})
    obj = serving(cluster, ns, "cached", b, 1)
    job_b = next(
        j
        for j in items(cluster, "jobs", ns, f"{OWNER_LABEL}=cached")
        if j["metadata"]["annotations"]["clipserve.io/model"] == b
    )
    in_cache_at = epoch_seconds(job_b["status"]["completionTime"])
    [green] = server_pods(cluster, ns, "cached")
    assert green["metadata"]["labels"]["clipserve.io/slot"] == "green"
    assert epoch_seconds(green["metadata"]["creationTimestamp"]) >= in_cache_at
    assert len(gets(mirror, "/b.pt")) == 1 and len(gets(mirror, "/a.pt")) == 1
    assert encode_model(real_node, ns, client, obj["status"]["endpoint"]) == b


def _degraded_with(cluster: Cluster, ns: str, name: str, words: str) -> dict[str, Any]:
    def seen() -> dict[str, Any] | None:
        obj = get(cluster, "clip", name, ns)
        degraded = condition(obj, "Degraded")
        return obj if words in degraded.get("message", "") else None

    return eventually(seen, f"Degraded saying {words!r}", LOAD_S)


def test_a_failing_download_degrades_with_its_cause_and_the_serving_slot_stays(
    cluster: Cluster,
    real_node: RealNode,
    operator_pod: str,
    ns: str,
    client: str,
    mirror: Origin,
    models: dict[str, str],
    volume: Callable[..., Volume],
) -> None:
    a = models["a"]
    size_mb = len(mirror.routes["/a.pt"].body) // 2**20 + 8  # type: ignore[arg-type]
    v = volume(size_mb)  # A fits; another checkpoint of its size does not
    clip(cluster, ns, "flaky", spec(a, cache=shared(v)))
    obj = serving(cluster, ns, "flaky", a, 1)
    endpoint = obj["status"]["endpoint"]
    [before] = server_pods(cluster, ns, "flaky")
    small = b"\0" * 1000
    bad = {
        "404": (f"{ARCH}:{mirror.url('/missing.pt')}", "answered 404 Not Found"),
        "sha256": (
            f"{ARCH}:{serve(mirror, '/small.pt', small)}#sha256={'0' * 64}",
            f"sha256 mismatch: expected {'0' * 64}, got {hashlib.sha256(small).hexdigest()}",
        ),
        "no space": (models["b"], "only"),
    }
    for what, (model, words) in bad.items():
        patch(cluster, ns, "flaky", {"model": model})
        obj = _degraded_with(cluster, ns, "flaky", words)
        degraded = condition(obj, "Degraded")
        assert degraded["reason"] == "WeightsDownloadFailed", what
        assert degraded["message"].startswith(f"weights of {model}: download failed: "), what
        weights = condition(obj, "WeightsReady")
        assert (weights["status"], weights["reason"]) == ("False", "DownloadFailed"), what
        # the serving slot is untouched: same pod, never restarted, still answering with A
        assert obj["status"]["activeModel"] == a and obj["status"]["pendingModel"] == model
        [pod] = server_pods(cluster, ns, "flaky")
        assert pod["metadata"]["uid"] == before["metadata"]["uid"], what
        assert pod["status"]["containerStatuses"][0]["restartCount"] == 0, what
        assert get(cluster, "deployment", "flaky-green", ns) is None, what
        assert encode_model(real_node, ns, client, endpoint) == a
    assert "needs" in condition(obj, "Degraded")["message"]


def test_a_model_image_serves_offline_with_no_download_in_the_cluster(
    cluster: Cluster,
    real_node: RealNode,
    node_images: list[str],
    operator_pod: str,
    ns: str,
    client: str,
    mirror: Origin,
    models: dict[str, str],
) -> None:
    a = models["a"]
    podman = ["bash", str(REPO / "scripts/podman.sh")]
    image = "localhost/clip-weights:test"
    # the documented one-file Dockerfile, built where the weights can be fetched (the host)
    subprocess.run(
        [*podman, "build", "--network=host", "-f", "model-image/Dockerfile",
         "--build-arg", f"MODEL={a}", "--build-arg", f"CLIPSERVE_IMAGE={node_images[0]}",
         "-t", image, "model-image"],
        cwd=REPO, check=True, capture_output=True, timeout=1800,
    )  # fmt: skip
    real_node.import_podman_image(image, podman)
    fetched = len(gets(mirror, "/a.pt"))
    model = a  # the image holds the cache of the very spec it was built for
    cache = {"type": "image", "images": {model: image}, "pullPolicy": "Never"}
    clip(cluster, ns, "img", spec(model, cache=cache))
    obj = serving(cluster, ns, "img", model, 1)
    [pod] = server_pods(cluster, ns, "img")
    volume = next(v for v in pod["spec"]["volumes"] if v["name"] == "cache")
    assert volume["image"] == {"reference": image, "pullPolicy": "Never"}
    assert len(gets(mirror, "/a.pt")) == fetched  # nothing fetched in the cluster
    assert encode_model(real_node, ns, client, obj["status"]["endpoint"]) == model


def test_the_chart_readmes_prefetch_job_fills_a_claim_the_chart_serves_from(
    cluster: Cluster,
    real_node: RealNode,
    node_images: list[str],
    helm: Helm,
    ns: str,
    client: str,
    mirror: Origin,
    models: dict[str, str],
    volume: Callable[..., Volume],
) -> None:
    from tests.chart.test_model_weights import prefetch_manifest

    a = models["a"]
    v = volume()
    claim, job = prefetch_manifest()
    claim["spec"]["storageClassName"] = v.name
    claim["spec"]["resources"]["requests"]["storage"] = "64Mi"
    pod = job["spec"]["template"]["spec"]
    command = pod["containers"][0]["command"]
    command[command.index("--model") + 1] = a
    pod.update(real_node.pin({}))
    for obj in (claim, job):
        obj["metadata"]["namespace"] = ns
        cluster.kubectl("apply", "-f", "-", input=json.dumps(obj))
    cluster.kubectl(
        "wait", "-n", ns, "--for=condition=Complete", "job/clip-weights-prefetch",
        "--timeout=600s", timeout=620,
    )  # fmt: skip
    values = {
        **pinned_values(),
        "model": a,
        "device": "cpu",
        "batching": {"computeWorkers": 1},
        "resources": {"requests": {"cpu": "100m", "memory": "512Mi"}, "limits": {"memory": "2Gi"}},
        "modelCache": {"type": "existingClaim", "existingClaim": "clip-weights", "readOnly": True},
    }
    helm_on(
        cluster, helm, "install", "clip", str(REPO / "charts/clipserve"), "-n", ns,
        "--wait", "--timeout=600s", values=values,
    )  # fmt: skip
    url = f"http://clip-clipserve.{ns}.svc.cluster.local:3000"
    assert encode_model(real_node, ns, client, url) == a
    server = items(cluster, "pods", ns, "app.kubernetes.io/instance=clip")[0]
    assert_reads_the_cache_read_only_offline(server, "clip-weights")


def _cold_start(
    cluster: Cluster, ns: str, name: str, model: str, cache: dict[str, Any] | None
) -> float:
    t0 = time.monotonic()
    clip(cluster, ns, name, spec(model, replicas=3, cache=cache))
    serving(cluster, ns, name, model, 3)
    return time.monotonic() - t0


def _swap_overlap(cluster: Cluster, ns: str, name: str, model: str) -> float:
    """Patch the model; seconds from the new slot's first pod to the old slot's last pod gone."""
    patch(cluster, ns, name, {"model": model})
    obj = get(cluster, "clip", name, ns)
    assert obj is not None
    old = obj["status"]["activeSlot"]
    first_new = eventually(
        lambda: next(
            (time.monotonic() for p in server_pods(cluster, ns, name)
             if p["metadata"]["labels"]["clipserve.io/slot"] != old),
            None,
        ),
        "the new slot's first pod", LOAD_S, every_s=0.2,
    )  # fmt: skip
    serving(cluster, ns, name, model, 3)
    eventually(
        lambda: all(
            p["metadata"]["labels"]["clipserve.io/slot"] != old
            for p in server_pods(cluster, ns, name)
        ),
        "the old slot's pods gone",
        LOAD_S,
        every_s=0.2,
    )
    return time.monotonic() - first_new


def test_measure_cold_start_and_swap_overlap_with_and_without_the_shared_cache(
    cluster: Cluster,
    real_node: RealNode,
    operator_pod: str,
    ns: str,
    volume: Callable[..., Volume],
    measure: Callable[[str, float], None],
) -> None:
    """Numbers, not assertions on them: ViT-B-32 (300 MB) over one 25 MB/s link, 3 replicas."""
    with Origin(host=real_node.ip, rate_bps=BENCH_RATE) as hub:
        c, d = (checkpoint(BENCH_ARCH, seed) for seed in (0, 1))
        c_spec = f"{BENCH_ARCH}:{spec_for(c, serve(hub, '/c.pt', c))}"
        d_spec = f"{BENCH_ARCH}:{spec_for(d, serve(hub, '/d.pt', d))}"
        link = f"{BENCH_ARCH} 300 MB over 25 MB/s, 3 replicas"
        per_pod = _cold_start(cluster, ns, "perpod", c_spec, None)
        measure(f"apply -> Ready, each pod downloads ({link})", per_pod)
        assert len(gets(hub, "/c.pt")) == 3
        overlap = _swap_overlap(cluster, ns, "perpod", d_spec)
        measure(f"swap: both slots' pods side by side, each pod downloads ({link})", overlap)
        cluster.kubectl("delete", "clip", "perpod", "-n", ns, "--wait=true", timeout=300)

        v = volume()
        cache = {"type": "shared", "storageClassName": v.name, "size": "1Gi"}
        fetched = len(gets(hub, "/c.pt"))
        shared_cache = _cold_start(cluster, ns, "shared", c_spec, cache)
        measure(f"apply -> Ready, shared prefetched cache ({link})", shared_cache)
        assert len(gets(hub, "/c.pt")) == fetched + 1
        overlap = _swap_overlap(cluster, ns, "shared", d_spec)
        measure(f"swap: both slots' pods side by side, prefetched first ({link})", overlap)
