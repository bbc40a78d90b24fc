"""Start and stop a local control plane (etcd, apiserver, controller-manager, scheduler, kwok)."""

from __future__ import annotations

import json
import os
import shutil
import ssl
import subprocess
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

from clipserve.bench.server import free_ports

from tests.support.cluster import components, pki
from tests.support.cluster.processes import Proc, is_running, log_tail, spawn, stop

REPO = Path(__file__).resolve().parents[3]
HERE = Path(__file__).resolve().parent
BINARIES = (
    "etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl", "kwok"
)  # fmt: skip
READY_TIMEOUT_S = float(os.environ.get("CLIPSERVE_CLUSTER_READY_TIMEOUT_S", "180"))
STATE_FILE = "state.json"


class ClusterError(RuntimeError):
    """The control plane could not be started or is not usable."""


class KubectlError(subprocess.CalledProcessError):
    """kubectl exited non-zero; str() includes its stderr."""

    def __str__(self) -> str:
        args = " ".join(str(a) for a in self.cmd[2:])  # without binary and kubeconfig paths
        return f"kubectl {args} exited {self.returncode}: {str(self.stderr).strip()}"


def _versions() -> dict[str, str]:
    lines = (REPO / "scripts/k8s/versions.env").read_text().splitlines()
    pairs = (line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))
    return {k.strip(): v.strip() for k, v in pairs}


def default_bin_dir() -> Path:
    """Where scripts/build-k8s.sh puts the binaries (override: CLIPSERVE_K8S_BIN)."""
    if override := os.environ.get("CLIPSERVE_K8S_BIN"):
        return Path(override)
    v = _versions()
    cache = Path(os.environ.get("CLIPSERVE_CACHE", Path.home() / ".cache/clipserve"))
    key = f"kubernetes-{v['K8S_VERSION']}_etcd-{v['ETCD_VERSION']}_kwok-{v['KWOK_VERSION']}"
    return cache / "k8s" / key / "bin"


@dataclass
class Cluster:
    """A running control plane: admin kubeconfig, binaries, state dir (logs, certs), processes."""

    kubeconfig: str
    bin_dir: Path
    state_dir: Path
    server: str
    procs: list[Proc] = field(default_factory=list, repr=False)

    def kubectl(self, *args: str, input: str | None = None, timeout: float = 120) -> str:
        """Run the version-matched kubectl against this cluster; stdout, or KubectlError."""
        cmd = [str(self.bin_dir / "kubectl"), f"--kubeconfig={self.kubeconfig}", *args]
        done = subprocess.run(cmd, input=input, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise KubectlError(done.returncode, cmd, done.stdout, done.stderr)
        return done.stdout

    def create_namespace(self, name: str, timeout_s: float = 60) -> str:
        """Create a namespace and wait for its default ServiceAccount (pods are refused before)."""
        self.kubectl("create", "namespace", name)
        deadline = time.monotonic() + timeout_s
        while not _kubectl_ok(self, "get", "serviceaccount", "default", "-n", name):
            if time.monotonic() > deadline:
                raise ClusterError(self.describe_failure(f"no default ServiceAccount in {name}"))
            time.sleep(0.1)
        return name

    def env(self) -> dict[str, str]:
        """os.environ plus KUBECONFIG and the cluster's bin dir first on PATH (for subprocesses)."""
        path = f"{self.bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
        return {**os.environ, "KUBECONFIG": self.kubeconfig, "PATH": path}

    def save(self) -> None:
        """Record PIDs and paths so `python -m tests.support.cluster down` can stop this cluster."""
        data = {
            "kubeconfig": self.kubeconfig,
            "bin_dir": str(self.bin_dir),
            "server": self.server,
            "procs": [p.__dict__ for p in self.procs],
        }
        (self.state_dir / STATE_FILE).write_text(json.dumps(data, indent=2))

    @classmethod
    def load(cls, state_dir: Path) -> Cluster | None:
        """The cluster recorded in state_dir, or None."""
        try:
            data = json.loads((state_dir / STATE_FILE).read_text())
        except FileNotFoundError:
            return None
        procs = [Proc(**p) for p in data["procs"]]
        return cls(data["kubeconfig"], Path(data["bin_dir"]), state_dir, data["server"], procs)

    def running(self) -> bool:
        """True when every recorded component is still alive."""
        return bool(self.procs) and all(is_running(p) for p in self.procs)

    def stop(self) -> None:
        """Stop components by PID (kwok and controllers first, etcd last); drop etcd data."""
        stop(list(reversed(self.procs)))
        shutil.rmtree(self.state_dir / "etcd", ignore_errors=True)
        (self.state_dir / STATE_FILE).unlink(missing_ok=True)

    def describe_failure(self, what: str) -> str:
        """An error text naming the state dir and the tail of each component log."""
        parts = [f"{what} (cluster state and logs: {self.state_dir})"]
        for p in self.procs:
            status = "running" if is_running(p) else "EXITED"
            parts.append(f"--- {p.name} [{status}] {p.log}\n{log_tail(p)}")
        return "\n".join(parts)


def _url_ok(url: str, context: ssl.SSLContext | None = None) -> bool:
    """True when GET url answers 200."""
    try:
        with urllib.request.urlopen(url, context=context, timeout=5) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def _wait(cluster: Cluster, what: str, check: Callable[[], bool], deadline: float) -> None:
    """Poll check() until true; fail fast if a component exited, with logs in the message."""
    while True:
        dead = [p.name for p in cluster.procs if not is_running(p)]
        if dead:
            raise ClusterError(cluster.describe_failure(f"{', '.join(dead)} exited while {what}"))
        if check():
            return
        if time.monotonic() > deadline:
            raise ClusterError(cluster.describe_failure(f"timed out while {what}"))
        time.sleep(0.25)


def _nodes_schedulable(cluster: Cluster) -> bool:
    """All four nodes Ready and free of the not-ready taint the node controller adds first."""
    nodes = json.loads(cluster.kubectl("get", "nodes", "-o", "json"))["items"]
    if len(nodes) < 4:
        return False
    for node in nodes:
        ready = any(
            c["type"] == "Ready" and c["status"] == "True"
            for c in node.get("status", {}).get("conditions", [])
        )
        taints = {t["key"] for t in node.get("spec", {}).get("taints", [])}
        if not ready or any(k.startswith("node.kubernetes.io/") for k in taints):
            return False
    return True


def _kubectl_ok(cluster: Cluster, *args: str) -> bool:
    try:
        cluster.kubectl(*args)
    except KubectlError:
        return False
    return True


def check_binaries(bin_dir: Path) -> Path:
    """The kwok stages file next to bin_dir; ClusterError if anything is missing."""
    stages = bin_dir.parent / "kwok" / "stages.yaml"
    missing = [b for b in BINARIES if not (bin_dir / b).is_file()]
    if missing or not stages.is_file():
        raise ClusterError(
            f"control-plane binaries missing in {bin_dir} ({', '.join(missing) or 'kwok stages'}):"
            " run `bash scripts/build-k8s.sh` (or `make tools`) first"
        )
    return stages


def start(
    state_dir: Path,
    bin_dir: Path | None = None,
    *,
    tie_to_parent: bool = True,
    apiserver_flags: Sequence[str] = (),
) -> Cluster:
    """Start a fresh control plane in state_dir and return once nodes accept pods;
    `apiserver_flags` are added to kube-apiserver's (say, an emulated version)."""
    bin_dir = bin_dir or default_bin_dir()
    stages = check_binaries(bin_dir)
    logs = state_dir / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    keys = pki.generate(state_dir / "pki")
    ports = components.Ports(*free_ports(5))
    server = f"https://127.0.0.1:{ports.apiserver}"
    kubeconfig = pki.write_kubeconfig(keys, "admin", server, state_dir / "kubeconfig")
    kcfg = {
        user: pki.write_kubeconfig(keys, user, server, state_dir / f"{user}.kubeconfig")
        for user in ("controller-manager", "scheduler", "kwok")
    }
    cluster = Cluster(str(kubeconfig), bin_dir, state_dir, server)
    deadline = time.monotonic() + READY_TIMEOUT_S

    def launch(name: str, argv: list[str]) -> None:
        cluster.procs.append(spawn(name, argv, logs, tie_to_parent=tie_to_parent))
        cluster.save()

    def wait(what: str, check: Callable[[], bool]) -> None:
        _wait(cluster, f"waiting for {what}", check, deadline)

    try:
        launch("etcd", components.etcd(bin_dir, state_dir, ports))
        wait("etcd", partial(_url_ok, f"http://127.0.0.1:{ports.etcd_client}/health"))
        launch("kube-apiserver", [*components.apiserver(bin_dir, keys, ports), *apiserver_flags])
        admin_tls = ssl.create_default_context(cafile=str(keys.ca_crt))
        admin_tls.load_cert_chain(keys.crt("admin"), keys.key("admin"))
        wait("kube-apiserver /readyz", partial(_url_ok, f"{server}/readyz", admin_tls))
        kcm = components.controller_manager(
            bin_dir, state_dir, keys, kcfg["controller-manager"], ports
        )
        launch("kube-controller-manager", kcm)
        launch("kube-scheduler", components.scheduler(bin_dir, state_dir, kcfg["scheduler"], ports))
        launch("kwok", components.kwok(bin_dir, stages, kcfg["kwok"]))
        # Client-side create: a Node POSTed with its status keeps it (the capacity kwok preserves).
        cluster.kubectl("create", "-f", str(HERE / "nodes.yaml"))
        # Component /healthz is always-allowed; their serving certs are self-signed.
        probe = ssl.create_default_context()
        probe.check_hostname = False
        probe.verify_mode = ssl.CERT_NONE
        for name, port in (
            ("kube-controller-manager", ports.controller_manager),
            ("kube-scheduler", ports.scheduler),
        ):
            wait(f"{name} /healthz", partial(_url_ok, f"https://127.0.0.1:{port}/healthz", probe))
        wait("nodes to be Ready", partial(_nodes_schedulable, cluster))
        # Pods are admitted only once the serviceaccount controller made the namespace's SA.
        sa = ("get", "serviceaccount", "default", "-n", "default")
        wait("the default ServiceAccount", partial(_kubectl_ok, cluster, *sa))
    except BaseException:
        cluster.stop()
        raise
    return cluster


@contextmanager
def running_cluster(
    state_dir: Path, bin_dir: Path | None = None, apiserver_flags: Sequence[str] = ()
) -> Iterator[Cluster]:
    """A cluster for the duration of the block; stopped even when the block raises."""
    cluster = start(state_dir, bin_dir, tie_to_parent=True, apiserver_flags=apiserver_flags)
    try:
        yield cluster
    finally:
        cluster.stop()
