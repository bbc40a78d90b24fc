"""The local cluster's metrics pipeline: Prometheus scraping the ClipService pods on the real node,
prometheus-adapter serving their queue depth to the HPA (custom.metrics.k8s.io), and KEDA
(external.metrics.k8s.io) for the chart's ScaledObject.

Prometheus (built from its Go module with Kubernetes discovery, which Debian's package lacks) runs
as a host process on the node IP: it needs nothing of the
cluster but the API server (service discovery) and the pod network, which the host reaches; a
cluster would run it in a pod, but the scrape job is the same (manifests/metrics/
prometheus-scrape.yaml, with the API server's address and this Prometheus's own client
certificate added, as for any Prometheus outside the cluster). It answers in the cluster at
prometheus-operated.monitoring.svc:9090, the name the Prometheus Operator gives it, through a
Service whose endpoint is the node IP. prometheus-adapter runs as users run it: a pod on the real
node from manifests/metrics/prometheus-adapter.yaml, unchanged but for the node it is pinned
to, its image built here (scripts/build-metrics.sh) and imported under the upstream name. KEDA
likewise, from the objects its release is built from. Pods, not host processes, because that
also proves the manifests, RBAC and APIService routing users rely on.
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import yaml
from clipserve.bench.server import free_ports

from tests.support.cluster import pki
from tests.support.cluster.harness import REPO, Cluster, _versions
from tests.support.cluster.node_config import NODE_IP, pin
from tests.support.cluster.processes import Proc, is_running, log_tail, spawn, stop
from tests.support.cluster.realnode import RealNode

NAMESPACE = "monitoring"
PROMETHEUS_SERVICE = "prometheus-operated"
PROMETHEUS_PORT = 9090
PROMETHEUS_USER = "clipserve:prometheus"
SCRAPE_JOB = REPO / "manifests/metrics/prometheus-scrape.yaml"
ADAPTER_MANIFEST = REPO / "manifests/metrics/prometheus-adapter.yaml"
# Short for the tests (a user's is 15-30 s): the HPA sees load within a few seconds of it.
SCRAPE_INTERVAL = "2s"
READY_TIMEOUT_S = 300


class MonitoringError(RuntimeError):
    """A part of the metrics pipeline did not come up."""


def build(component: str) -> Path:
    """scripts/build-metrics.sh for one component (cached: seconds once built); its bin dir."""
    done = subprocess.run(
        ["bash", str(REPO / "scripts/build-metrics.sh"), component],
        capture_output=True,
        text=True,
    )
    if done.returncode != 0:
        raise MonitoringError(
            f"scripts/build-metrics.sh {component} failed:\n{done.stderr[-4000:]}"
        )
    return Path(done.stdout.strip().splitlines()[-1])


@dataclass
class Prometheus:
    """A running Prometheus: where it answers (from the host) and its process."""

    url: str
    proc: Proc

    def query(self, expr: str, at: float | None = None) -> list[dict[str, Any]]:
        """An instant query's result vector (now, or at a unix time)."""
        params = {"query": expr, **({"time": f"{at:.3f}"} if at is not None else {})}
        body = httpx.get(f"{self.url}/api/v1/query", params=params, timeout=10).json()
        if body.get("status") != "success":
            raise MonitoringError(f"query {expr!r} failed: {body}")
        return list(body["data"]["result"])

    def value(self, expr: str, at: float | None = None) -> float | None:
        """The single value of a query, or None when it returns nothing (or NaN)."""
        result = self.query(expr, at)
        value = float(result[0]["value"][1]) if result else None
        return None if value is None or value != value else value

    def stop(self) -> None:
        """Stop the process."""
        stop([self.proc])


def scrape_config(cluster: Cluster, keys: pki.Pki) -> dict[str, Any]:
    """The user's scrape job, told where the API server is and who this Prometheus is."""
    config = yaml.safe_load(SCRAPE_JOB.read_text())
    tls = {
        "ca_file": str(keys.ca_crt),
        "cert_file": str(keys.crt("prometheus")),
        "key_file": str(keys.key("prometheus")),
    }
    for job in config["scrape_configs"]:
        job["scrape_interval"] = SCRAPE_INTERVAL
        for sd in job["kubernetes_sd_configs"]:
            sd.update({"api_server": cluster.server, "tls_config": tls})
    return {"global": {"scrape_interval": SCRAPE_INTERVAL}, **config}


def _prometheus_rbac() -> list[dict[str, Any]]:
    """What service discovery reads, for this Prometheus's user (a ClusterRole, as users give)."""
    rule = {
        "apiGroups": ["", "discovery.k8s.io"],
        "resources": ["services", "endpoints", "endpointslices", "pods"],
        "verbs": ["get", "list", "watch"],
    }
    meta = {"name": "clipserve-test-prometheus"}
    return [
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": meta,
            "rules": [rule],
        },
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRoleBinding",
            "metadata": meta,
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", **meta},
            "subjects": [
                {"apiGroup": "rbac.authorization.k8s.io", "kind": "User", "name": PROMETHEUS_USER}
            ],
        },
    ]


def _in_cluster_service(port: int) -> list[dict[str, Any]]:
    """prometheus-operated.monitoring:9090 -> this host's Prometheus on the node IP."""
    return [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": NAMESPACE}},
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": PROMETHEUS_SERVICE, "namespace": NAMESPACE},
            "spec": {"ports": [{"name": "web", "port": PROMETHEUS_PORT, "targetPort": port}]},
        },
        {
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": PROMETHEUS_SERVICE,
                "namespace": NAMESPACE,
                "labels": {"kubernetes.io/service-name": PROMETHEUS_SERVICE},
            },
            "addressType": "IPv4",
            "endpoints": [{"addresses": [NODE_IP], "conditions": {"ready": True}}],
            "ports": [{"name": "web", "port": port, "protocol": "TCP"}],
        },
    ]


def apply(cluster: Cluster, objects: list[dict[str, Any]]) -> None:
    """kubectl apply the objects (server-side, as one manifest)."""
    manifest = "\n---\n".join(json.dumps(o) for o in objects)
    cluster.kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", input=manifest)


def start_prometheus(
    cluster: Cluster, binary: Path, workdir: Path, *, tie_to_parent: bool = True
) -> Prometheus:
    """Prometheus on the node IP, discovering pods through the API server; reachable in-cluster
    (`tie_to_parent=False`: it outlives this process, as for `make cluster METRICS=1`)."""
    keys = pki.Pki(cluster.state_dir / "pki")
    pki.issue(keys, "prometheus", PROMETHEUS_USER)
    apply(cluster, _prometheus_rbac())
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "prometheus.yml"
    config.write_text(json.dumps(scrape_config(cluster, keys), indent=2))  # JSON is YAML
    (port,) = free_ports(1)
    argv = [
        str(binary),
        f"--config.file={config}",
        f"--storage.tsdb.path={workdir / 'data'}",
        f"--web.listen-address={NODE_IP}:{port}",
        "--storage.tsdb.retention.time=2h",
    ]
    prom = Prometheus(
        f"http://{NODE_IP}:{port}", spawn("prometheus", argv, workdir, tie_to_parent=tie_to_parent)
    )
    deadline = time.monotonic() + READY_TIMEOUT_S
    while not _ready(prom.url):
        if not is_running(prom.proc) or time.monotonic() > deadline:
            prom.stop()
            raise MonitoringError(f"prometheus did not start:\n{log_tail(prom.proc)}")
        time.sleep(0.25)
    apply(cluster, _in_cluster_service(port))
    return prom


def _ready(url: str) -> bool:
    try:
        return httpx.get(f"{url}/-/ready", timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def pinned(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The objects with every Deployment's pods pinned to the real node."""
    for obj in objects:
        if obj["kind"] == "Deployment":
            template = obj["spec"]["template"]
            template["spec"] = pin(template["spec"])
    return objects


def image_of(objects: list[dict[str, Any]], deployment: str) -> str:
    """The image of a Deployment's first container."""
    dep = next(
        o for o in objects if o["kind"] == "Deployment" and o["metadata"]["name"] == deployment
    )
    return str(dep["spec"]["template"]["spec"]["containers"][0]["image"])


def install_prometheus_adapter(cluster: Cluster, node: RealNode, bin_dir: Path) -> None:
    """manifests/metrics/prometheus-adapter.yaml on the real node; returns once the API serves."""
    objects = [d for d in yaml.safe_load_all(ADAPTER_MANIFEST.read_text()) if d]
    image = image_of(objects, "prometheus-adapter")
    node.import_binary_image(bin_dir / "prometheus-adapter", image, ["/adapter"])
    apply(cluster, pinned(objects))
    wait_available(cluster, [o for o in objects if o["kind"] == "APIService"])


def wait_available(cluster: Cluster, api_services: list[dict[str, Any]]) -> None:
    """Wait until the API server reaches every aggregated API's pods (condition Available)."""
    for svc in api_services:
        name = svc["metadata"]["name"]
        try:
            cluster.kubectl(
                "wait", f"apiservice/{name}", "--for=condition=Available",
                f"--timeout={READY_TIMEOUT_S}s", timeout=READY_TIMEOUT_S + 30,
            )  # fmt: skip
        except Exception as exc:
            state = cluster.kubectl("get", f"apiservice/{name}", "-o", "json")
            conditions = json.loads(state).get("status", {}).get("conditions")
            raise MonitoringError(f"APIService {name} not available: {conditions}") from exc


def keda_manifest(cluster: Cluster, bin_dir: Path) -> list[dict[str, Any]]:
    """KEDA's core install as its release builds it (kustomize config/minimal: CRDs, operator,
    metrics server, RBAC; no admission webhooks), with the release's image tags."""
    version = _versions()["KEDA_VERSION"].removeprefix("v")
    rendered = cluster.kubectl("kustomize", str(bin_dir.parent / "manifests/keda/minimal"))
    objects = [d for d in yaml.safe_load_all(rendered) if d]
    for obj in objects:
        if obj["kind"] != "Deployment":
            continue
        for container in obj["spec"]["template"]["spec"]["containers"]:
            container["image"] = f"{container['image'].rsplit(':', 1)[0]}:{version}"
            # `Always` would ask a registry this cluster cannot reach; the image is on the node.
            container["imagePullPolicy"] = "IfNotPresent"
    return pinned(objects)


def install_keda(cluster: Cluster, node: RealNode, bin_dir: Path) -> None:
    """KEDA's operator and metrics server on the real node; returns once external metrics serve."""
    objects = keda_manifest(cluster, bin_dir)
    for deployment, binary in (
        ("keda-operator", "keda"),
        ("keda-metrics-apiserver", "keda-adapter"),
    ):
        node.import_binary_image(bin_dir / binary, image_of(objects, deployment), [f"/{binary}"])
    crds = [o for o in objects if o["kind"] == "CustomResourceDefinition"]
    apply(cluster, crds)
    for crd in crds:
        cluster.kubectl("wait", f"crd/{crd['metadata']['name']}", "--for=condition=Established")
    apply(cluster, [o for o in objects if o["kind"] != "CustomResourceDefinition"])
    wait_available(cluster, [o for o in objects if o["kind"] == "APIService"])
