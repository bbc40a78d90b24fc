"""The service image, started from the chart's rendered Deployment as the kubelet would start it.

Command, args, env, volume mounts, uid/gid, read-only root, dropped capabilities, memory limit
and the preStop hook all come from `helm template` (tests/support/containers.py); only the model
is chosen (random weights: no download). No GPU exists here: the GPU case checks that a pod
given one refuses to start on the CPU, with the cause.
"""

from __future__ import annotations

import base64
import io
import re
import subprocess
import time
from collections.abc import Iterator

import pytest
from PIL import Image

from tests.support.containers import PodContainer, podman, run_pod_container, run_to_completion
from tests.support.rendering import ROOT, Helm, pod_spec

pytestmark = [pytest.mark.images, pytest.mark.slow]

# A longer drain grace than the default 5 s: on a loaded machine `podman kill` itself can take
# seconds, and the test must reach the server inside the window where it still serves.
VALUES = {"model": "ViT-B-32:random", "drain": {"graceSeconds": 15}}


def png_b64() -> str:
    buf = io.BytesIO()
    Image.new("RGB", (320, 240), (30, 120, 200)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def wait_for_startup(c: PodContainer, probe: dict) -> None:
    """Poll the startup probe as the kubelet does, within its period x failure threshold."""
    budget = probe["periodSeconds"] * probe["failureThreshold"]
    deadline = time.monotonic() + budget
    while time.monotonic() < deadline:
        assert c.state()["Status"] == "running", f"the container stopped:\n{c.logs()}"
        try:
            if c.get(probe["httpGet"]["path"], timeout=5).status_code == 200:
                return
        except Exception:  # not listening yet
            pass
        time.sleep(1)
    raise AssertionError(f"startup probe not passed within {budget}s:\n{c.logs()}")


@pytest.fixture(scope="module")
def pod(helm: Helm) -> dict:
    return pod_spec(helm.template(VALUES))


@pytest.fixture(scope="module")
def service(images: dict[str, str], pod: dict) -> Iterator[PodContainer]:
    with run_pod_container(images["service"], pod) as c:
        wait_for_startup(c, pod["containers"][0]["startupProbe"])
        yield c


def test_the_build_tags_the_image_the_chart_pulls_by_default(
    images: dict[str, str], pod: dict
) -> None:
    image = pod["containers"][0]["image"]
    assert image.startswith("ghcr.io/clipserve/clipserve:")
    assert podman("image", "exists", image, check=False).returncode == 0, image


def test_the_charts_probes_answer_from_the_image(service: PodContainer, pod: dict) -> None:
    spec = pod["containers"][0]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        path = spec[probe]["httpGet"]["path"]
        assert service.get(path).status_code == 200, (probe, path)


def test_encode_rank_models_and_metrics_answer_from_the_image(service: PodContainer) -> None:
    enc = service.post("/encode", [{"text": "a photo of a dog"}, {"img_blob": png_b64()}])
    assert enc.status_code == 200, enc.text
    vectors = enc.json()
    assert len(vectors) == 2 and len(vectors[0]) == len(vectors[1]) == 512
    rank = service.post(
        "/rank",
        {"queries": [{"img_blob": png_b64()}], "candidates": [{"text": "a"}, {"text": "b"}]},
    )
    assert rank.status_code == 200, rank.text
    assert abs(sum(rank.json()["probabilities"][0]) - 1) < 1e-4
    (model,) = service.get("/models").json()["models"]
    assert model["device"] == "cpu" and model["random_weights"] is True
    metrics = service.get("/metrics").text
    assert re.search(r'^clipserve_model_info\{[^}]*device="cpu"[^}]*\} 1\.0$', metrics, re.M)
    assert 'clipserve_requests_total{endpoint="/encode",status="200"}' in metrics


def test_the_pages_static_files_are_in_the_image(service: PodContainer) -> None:
    # Package data of the wheel (playground) and of a dependency (Swagger UI), served offline.
    for path in ("/", "/static/playground/playground.js", "/schema/swagger"):
        r = service.get(path)
        assert r.status_code == 200 and r.content, path


def test_the_container_runs_as_the_charts_uid_with_only_cache_and_tmp_writable(
    service: PodContainer,
) -> None:
    assert service.exec("id", "-u").stdout.strip() == "10001"
    for path in ("/cache/probe", "/tmp/probe"):
        assert service.exec("touch", path).returncode == 0, path
    denied = service.exec("touch", "/opt/clipserve/probe")
    assert denied.returncode != 0 and "Read-only file system" in denied.stderr


def test_sigterm_drains_and_exits_0_within_the_grace_period(
    service: PodContainer, pod: dict
) -> None:
    # After the other tests of the shared container, which it stops. The kubelet's order: the
    # preStop hook (counted in the grace period), then SIGTERM, then SIGKILL when it runs out.
    started = time.monotonic()
    assert service.pre_stop, "the chart renders a preStop hook by default"
    assert service.exec(*service.pre_stop).returncode == 0
    podman("kill", "--signal", "TERM", service.name)
    # During drain.graceSeconds readiness is off while requests are still served.
    assert service.get("/readyz").status_code == 503
    assert service.post("/encode", [{"text": "still served"}]).status_code == 200
    remaining = service.grace_s - (time.monotonic() - started)
    code = service.wait_exit(timeout=remaining)
    assert code == 0, f"exit {code} within {service.grace_s}s grace:\n{service.logs()}"


def test_a_pod_given_a_gpu_without_a_usable_cuda_stops_with_the_cause(
    helm: Helm, images: dict[str, str]
) -> None:
    # gpu.count 1: the chart asks for `cuda`; this machine has no GPU or driver, as a node whose
    # pod lacks the NVIDIA runtime. The pod must fail start-up, not compute on the CPU.
    pod = pod_spec(helm.template({**VALUES, "gpu": {"count": 1}}))
    with run_pod_container(images["service"], pod) as c:
        code = c.wait_exit(timeout=180)
        logs = c.logs()
    assert code == 1, logs
    assert "start-up failed: device cuda: CUDA is not usable" in logs
    # The image's torch variant and the driver it needs (PyPI's default build: CUDA 13).
    assert "is built for CUDA 13.0, which needs NVIDIA driver >= 580" in logs


def test_a_build_without_the_disk_it_needs_stops_and_says_how_much(tmp_path) -> None:
    # A 64 MB tmpfs as the cache, in a mount namespace of its own: nothing to clean up after.
    script = (
        f"mount -t tmpfs -o size=64m tmpfs {tmp_path} && "
        f"CLIPSERVE_CACHE={tmp_path} bash {ROOT}/scripts/build-images.sh service"
    )
    proc = subprocess.run(
        ["unshare", "--mount", "sh", "-c", script], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 1
    assert re.search(r"needs about \d+ GB free in \S+; 0 GB are free", proc.stderr)


def test_the_device_init_container_reports_cpu_in_its_termination_message(
    images: dict[str, str], pod: dict
) -> None:
    # What the operator's DEVICE column reads from the pod status: the kubelet copies this file.
    init = next(c for c in pod["initContainers"] if c["name"] == "device")
    code, message, logs = run_to_completion(images["service"], pod, init)
    assert (code, message) == (0, "cpu"), logs


def test_the_device_init_container_of_a_gpu_pod_without_cuda_fails_with_the_cause(
    helm: Helm, images: dict[str, str]
) -> None:
    pod = pod_spec(helm.template({**VALUES, "gpu": {"count": 1}}))
    init = next(c for c in pod["initContainers"] if c["name"] == "device")
    code, message, logs = run_to_completion(images["service"], pod, init)
    # The pod never reaches its server; with FallbackToLogsOnError the kubelet makes the log's
    # tail the termination message, which the ClipService's Degraded condition shows.
    assert code == 1 and message == "", logs
    assert "device cuda: CUDA is not usable" in logs
