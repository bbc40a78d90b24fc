"""A cluster without image volumes, on a real control plane of its own: kube-apiserver 1.36
emulating 1.34 with the ImageVolume gate off (1.36 itself locks the gate on). Such an API server
accepts a Deployment with an image volume and drops the volume and its mount without a word;
the operator must say so on the ClipService instead of starting pods without their weights.
(The session's cluster, gate on, runs a type image ClipService to Ready in
test_weights_cluster.py.)"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest

from tests.support.clipservices import clip, condition, degraded, fully_ready, get, patch, warnings
from tests.support.cluster.harness import Cluster, running_cluster
from tests.support.running import OperatorRun, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.helm, pytest.mark.slow]

NO_IMAGE_VOLUMES = ("--emulated-version=1.34", "--feature-gates=ImageVolume=false")
CPU_POOL = {"clipserve.io/node-pool": "cpu"}
A, B = "ViT-B-32:random", "ViT-B-16:random"
IMAGES = {A: "registry.example.com/clip:a", B: "registry.example.com/clip:b"}
ERRORS = "clipserve_operator_reconcile_errors_total"
LABELS = 'kind="permanent",reason="ImageVolumeUnsupported"'


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """This module's control plane (instead of the session's), its API server without image
    volumes."""
    state = tmp_path_factory.mktemp("no-image-volumes")
    with running_cluster(state, apiserver_flags=NO_IMAGE_VOLUMES) as running:
        yield running


def _says_why(message: str, deployment: str) -> None:
    for words in (
        f"drops the image volume cache of Deployment {deployment}",
        "Kubernetes 1.35+",
        "ImageVolume feature gate",
        "containerd 2.1+",
        "CRI-O 1.31+",
        f"Deployment {deployment} is not applied",
        "type shared",
    ):
        assert words in message, words


def test_the_api_server_really_drops_image_volumes(cluster: Cluster, ns: str) -> None:
    version = json.loads(cluster.kubectl("version", "-o", "json"))["serverVersion"]
    assert (version["minor"], version["emulationMinor"]) == ("36", "34")
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "probe", "namespace": ns},
        "spec": {
            "containers": [
                {"name": "c", "image": "x", "volumeMounts": [{"name": "w", "mountPath": "/w"}]}
            ],
            "volumes": [{"name": "w", "image": {"reference": IMAGES[A]}}],
        },
    }
    stored = json.loads(
        cluster.kubectl(
            "create", "--dry-run=server", "-o", "json", "-f", "-", input=json.dumps(pod)
        )
    )
    # accepted, with the volume and its mount silently gone (the ServiceAccount token's stay)
    volumes = {v["name"]: v for v in stored["spec"].get("volumes") or []}
    assert "w" not in volumes and not any("image" in v for v in volumes.values())
    assert "w" not in {m["name"] for m in stored["spec"]["containers"][0]["volumeMounts"]}


def test_a_model_image_cache_is_degraded_and_no_pod_starts_without_its_weights(
    cluster: Cluster, running_operator: OperatorRun, ns: str
) -> None:
    before = running_operator.metric(ERRORS, LABELS)
    cache = {"type": "image", "images": IMAGES}
    clip(
        cluster,
        ns,
        "img",
        {"model": A, "modelCache": cache, "nodePool": {"nodeSelector": CPU_POOL}},
    )
    cond = wait_for(
        "ImageVolumeUnsupported", lambda: degraded(cluster, ns, "img", "ImageVolumeUnsupported")
    )
    _says_why(cond["message"], "img-blue")
    warned = wait_for(
        "a Warning event", lambda: warnings(cluster, ns, "img", "ImageVolumeUnsupported")
    )
    assert "img-blue" in warned[0]["message"]
    assert running_operator.metric(ERRORS, LABELS) > before
    assert get(cluster, "deployment", "img-blue", ns) is None  # no pod that could only crash
    assert get(cluster, "service", "img", ns) is not None  # what can be applied still is
    ready = condition(get(cluster, "clip", "img", ns), "Ready")
    assert (ready["status"], ready["reason"]) == ("False", "NotCreated")


def test_a_serving_clipservice_switched_to_a_model_image_keeps_serving(
    cluster: Cluster, running_operator: OperatorRun, ns: str
) -> None:
    clip(cluster, ns, "sw", {"model": A, "replicas": 2, "nodePool": {"nodeSelector": CPU_POOL}})
    wait_for("Ready", lambda: fully_ready(cluster, ns, "sw"))
    # A swap to B with a model image: the new slot and the re-rendered serving slot would both
    # lose their cache volume, so neither is applied and the old pods go on serving A.
    patch(cluster, ns, "sw", {"model": B, "modelCache": {"type": "image", "images": IMAGES}})
    cond = wait_for(
        "ImageVolumeUnsupported", lambda: degraded(cluster, ns, "sw", "ImageVolumeUnsupported")
    )
    _says_why(cond["message"], "sw-green")
    obj = get(cluster, "clip", "sw", ns)
    assert obj is not None
    assert obj["status"]["activeModel"] == A and obj["status"]["pendingModel"] == B
    assert condition(obj, "Ready")["status"] == "True"
    assert get(cluster, "deployment", "sw-green", ns) is None
    blue = get(cluster, "deployment", "sw-blue", ns)
    assert blue is not None and blue["status"]["readyReplicas"] == 2
    volumes = blue["spec"]["template"]["spec"]["volumes"]
    assert "emptyDir" in next(v for v in volumes if v["name"] == "cache")
