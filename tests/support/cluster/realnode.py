"""A real node beside the kwok pools: containerd + runc, kubelet, kube-proxy, CoreDNS, a pod
bridge, and kube-router's firewall enforcing NetworkPolicies.

A RealNode (started by node_join.join) is what tests use: import an image, pin a pod spec to the
node, run a pod and exec in it; `stop()` takes it down and puts the machine back as it was
(notes/real-node.md has the trial it follows).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support.cluster import host, oci
from tests.support.cluster.harness import Cluster, KubectlError, _versions
from tests.support.cluster.node_config import (
    BRIDGE,
    K8S_NAMESPACE,
    NODE_IP,
    NODE_NAME,
    NodeDirs,
    pin,
)
from tests.support.cluster.processes import Proc, is_running, log_tail, stop

NODE_BINARIES = ("containerd", "containerd-shim-runc-v2", "ctr", "coredns", "pause", "probe")
RUNC = "/usr/sbin/runc"
CNI_BIN = "/usr/lib/cni"
PROBE_IMAGE = "clipserve.local/probe:test"
SOURCE_LABEL = "clipserve.io/source"
STATE_FILE = "node.json"
FORWARDER = "apiserver-forward"
KUBE_ROUTER = "kube-router"


class NodeError(RuntimeError):
    """The real node could not be started, or stopped cleanly."""


def cache_root() -> Path:
    """Where the real node keeps its lock, its run dir and its persistent image store."""
    cache = Path(os.environ.get("CLIPSERVE_CACHE", Path.home() / ".cache/clipserve"))
    return cache / "realnode"


def default_node_bin() -> Path:
    """Where scripts/build-node.sh puts containerd, CoreDNS, pause and probe."""
    v = _versions()
    cache = Path(os.environ.get("CLIPSERVE_CACHE", Path.home() / ".cache/clipserve"))
    key = f"node_containerd-{v['CONTAINERD_VERSION']}_coredns-{v['COREDNS_VERSION']}"
    return cache / "k8s" / key / "bin"


def default_netpol_bin() -> Path:
    """Where scripts/build-netpol.sh puts kube-router, the node's NetworkPolicy enforcer."""
    v = _versions()
    cache = Path(os.environ.get("CLIPSERVE_CACHE", Path.home() / ".cache/clipserve"))
    return cache / "k8s" / f"netpol_kube-router-{v['KUBE_ROUTER_VERSION']}" / "bin"


def node_dirs(root: Path) -> NodeDirs:
    """The run dir and image store of a node kept under root."""
    return NodeDirs(run=root / "run", images=root / "containerd")


@dataclass
class RealNode:
    """A running real node joined to `cluster`: its dirs, binaries and processes."""

    cluster: Cluster
    dirs: NodeDirs
    bin_dir: Path
    procs: list[Proc] = field(default_factory=list, repr=False)
    lock_fd: int | None = field(default=None, repr=False)

    name = NODE_NAME
    ip = NODE_IP

    # --- for tests ---------------------------------------------------------------------------

    def ctr(self, *args: str, timeout: float = 1800) -> str:
        """Run ctr against the node's containerd, in the CRI's namespace; stdout."""
        argv = [str(self.bin_dir / "ctr"), "-a", str(self.dirs.containerd_socket)]
        done = subprocess.run(
            [*argv, "-n", K8S_NAMESPACE, *args], capture_output=True, text=True, timeout=timeout
        )
        if done.returncode != 0:
            raise NodeError(f"ctr {' '.join(args)} exited {done.returncode}: {done.stderr.strip()}")
        return done.stdout

    def image_source(self, image: str) -> str | None:
        """The source id recorded when image was imported (None: not present)."""
        for line in self.ctr("images", "ls").splitlines()[1:]:
            cols = line.split()
            if cols and cols[0] == image:
                labels = dict(kv.split("=", 1) for kv in cols[-1].split(",") if "=" in kv)
                return labels.get(SOURCE_LABEL, "")
        return None

    def import_archive(self, archive: Path, image: str, source_id: str) -> None:
        """Import an OCI archive holding image, unless the same source is already there."""
        present = self.image_source(image)
        if present == source_id:
            return
        if present is not None:
            # Another build under the same name: remove it first. Re-pointing a name on import
            # leaves containerd 2.3.7 without the image's id reference (sha256:<config>), which
            # the kubelet mounts image volumes by: "failed to get image volume ref ... not found".
            self.ctr("images", "rm", image)
        self.ctr("images", "import", "--local", "--discard-unpacked-layers", str(archive))
        if self.image_source(image) is None:
            raise NodeError(f"{archive} did not provide {image}")
        self.ctr("images", "label", image, f"{SOURCE_LABEL}={source_id}")

    def import_podman_image(self, image: str, podman: list[str]) -> None:
        """Import image from podman's storage (saved as an OCI archive) unless already there."""
        image_id = host.run(*podman, "image", "inspect", "--format", "{{.Id}}", image).strip()
        if self.image_source(image) == image_id:
            return
        # Beside the image store, not in /tmp: a service image is several GB.
        with tempfile.TemporaryDirectory(dir=self.dirs.images.parent) as tmp:
            archive = Path(tmp) / "image.tar"
            save = ("save", "--format", "oci-archive", "-o", str(archive), image)
            host.run(*podman, *save, timeout=1800)
            self.import_archive(archive, image, image_id)

    def import_binary_image(self, binary: Path, image: str, entrypoint: list[str]) -> None:
        """Import a one-binary image (pause, probe) built from binary."""
        with tempfile.TemporaryDirectory(dir=self.dirs.run) as tmp:
            archive = Path(tmp) / "image.tar"
            digest = oci.write_archive(binary, image, entrypoint, "65534:65534", archive)
            self.import_archive(archive, image, digest.replace(":", "-"))

    def pin(self, pod_spec: dict[str, Any]) -> dict[str, Any]:
        """pod_spec with the real node's selector and toleration added."""
        return pin(pod_spec)

    def run_pod(
        self, namespace: str, name: str, image: str, args: list[str], wait: bool = True
    ) -> None:
        """Create a pod of image on the real node (the image must be imported); wait for Ready."""
        container = {"name": "main", "image": image, "args": args, "imagePullPolicy": "Never"}
        pod = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app": name}},
            "spec": self.pin({"containers": [container], "terminationGracePeriodSeconds": 2}),
        }
        self.cluster.kubectl("apply", "-f", "-", input=json.dumps(pod))
        if wait:
            self.cluster.kubectl(
                "wait", "-n", namespace, f"pod/{name}", "--for=condition=Ready", "--timeout=120s"
            )

    def client_pod(self, namespace: str, name: str = "client") -> str:
        """A pod running the probe client (idle until exec'd into); its name."""
        self.run_pod(namespace, name, PROBE_IMAGE, ["sleep"])
        return name

    def exec(self, namespace: str, pod: str, *command: str, timeout: float = 120) -> str:
        """Run command in the pod's first container (kubectl exec); its stdout."""
        return self.cluster.kubectl("exec", "-n", namespace, pod, "--", *command, timeout=timeout)

    # --- lifecycle ---------------------------------------------------------------------------

    def save(self) -> None:
        """Record PIDs, so a later run (or `down`) can stop them after a crash."""
        data = {
            "server": self.cluster.server,
            "bin_dir": str(self.bin_dir),
            "procs": [p.__dict__ for p in self.procs],
        }
        (self.dirs.run / STATE_FILE).write_text(json.dumps(data, indent=2))

    @classmethod
    def load(cls, cluster: Cluster, root: Path | None = None) -> RealNode | None:
        """The node recorded as joined to cluster (by a detached `up`), or None."""
        dirs = node_dirs(root or cache_root())
        try:
            data = json.loads((dirs.run / STATE_FILE).read_text())
        except FileNotFoundError:
            return None
        if data["server"] != cluster.server:
            return None
        return cls(cluster, dirs, Path(data["bin_dir"]), [Proc(**p) for p in data["procs"]])

    def running(self) -> bool:
        """True when every recorded component is still alive."""
        return bool(self.procs) and all(is_running(p) for p in self.procs)

    def describe_failure(self, what: str) -> str:
        """An error text with the tail of every node component's log."""
        parts = [f"{what} (real node files and logs: {self.dirs.run})"]
        for p in self.procs:
            status = "running" if is_running(p) else "EXITED"
            parts.append(f"--- {p.name} [{status}] {p.log}\n{log_tail(p)}")
        return "\n".join(parts)

    def stop(self) -> None:
        """Remove the node's pods, stop its components, and restore the machine."""
        forwarder = [p for p in self.procs if p.name == FORWARDER]
        if self.lock_fd is None and not (forwarder and is_running(forwarder[0])):
            # Nothing of ours holds the lock any more: take it before touching the machine.
            self.lock_fd = host.lock_machine(self.dirs.run.parent / "lock")
        try:
            self._drain()
        finally:
            by_name = {p.name: p for p in self.procs}
            names = ("kubelet", KUBE_ROUTER, "kube-proxy", "coredns")
            stop([by_name[n] for n in names if n in by_name])
            if "containerd" in by_name and is_running(by_name["containerd"]):
                remove_containers(self)
            # The forwarder holds the machine lock for a detached node: it goes last.
            stop([p for p in reversed(self.procs) if p.name != FORWARDER])
            try:
                cleanup(self.dirs, self.bin_dir, self.cluster.bin_dir)
            finally:
                stop([p for p in self.procs if p.name == FORWARDER])
                self.procs.clear()
                (self.dirs.run / STATE_FILE).unlink(missing_ok=True)
                if self.lock_fd is not None:
                    os.close(self.lock_fd)
                    self.lock_fd = None

    def _drain(self) -> None:
        """Force-delete every pod on the node and wait (bounded) until none of them runs."""
        try:
            self.cluster.kubectl(
                "delete", "pods", "-A", "--field-selector", f"spec.nodeName={NODE_NAME}",
                "--grace-period=0", "--force", "--wait=false",
            )  # fmt: skip
        except KubectlError:
            return  # the API server is gone: nothing can reach the kubelet either
        containerd = next((p for p in self.procs if p.name == "containerd"), None)
        # The kubelet stops force-deleted pods within seconds; whatever still runs after this
        # bound is killed through containerd anyway.
        deadline = time.monotonic() + 20
        while containerd and is_running(containerd) and time.monotonic() < deadline:
            try:
                if "RUNNING" not in self.ctr("tasks", "ls"):
                    break
            except NodeError:
                break
            time.sleep(1)
        with contextlib.suppress(KubectlError):
            self.cluster.kubectl("delete", "node", NODE_NAME, "--wait=false")


def remove_containers(node: RealNode) -> None:
    """Delete what containerd still holds (tasks, containers, sandboxes) in the CRI namespace."""
    with contextlib.suppress(NodeError):
        for task in node.ctr("tasks", "ls", "-q").split():
            for args in (("tasks", "kill", "-s", "SIGKILL", task), ("tasks", "delete", "-f", task)):
                with contextlib.suppress(NodeError):
                    node.ctr(*args)
    for kind in ("sandboxes", "containers"):
        with contextlib.suppress(NodeError):
            for item in node.ctr(kind, "ls", "-q").split():
                with contextlib.suppress(NodeError):
                    node.ctr(kind, "rm", *(("-f",) if kind == "sandboxes" else ()), item)


def cleanup(dirs: NodeDirs, node_bin: Path, cluster_bin: Path) -> None:
    """Undo everything a node (running or crashed) left on the machine; needs the lock."""
    runc_root = dirs.runc_root
    for ns_dir in runc_root.glob("*") if runc_root.exists() else ():
        for cid in host.run(RUNC, "--root", str(ns_dir), "list", "-q", check=False).split():
            host.run(RUNC, "--root", str(ns_dir), "kill", cid, "KILL", check=False)
            host.run(RUNC, "--root", str(ns_dir), "delete", "--force", cid, check=False)
    host.kill_shims(node_bin / "containerd-shim-runc-v2", dirs.containerd_socket)
    time.sleep(0.5)  # killed processes leave their cgroups asynchronously
    host.unmount_under(dirs.run, dirs.images)
    host.remove_cgroups()
    if (cluster_bin / "kube-proxy").exists():
        host.run(str(cluster_bin / "kube-proxy"), "--cleanup", check=False)
    host.remove_iptables_chains()
    host.remove_ipsets()  # after the chains: a set that a rule still matches cannot go
    host.delete_bridge(BRIDGE)
    shutil.rmtree(dirs.shims, ignore_errors=True)
    host.restore(dirs.run.parent)
    host.check_restored(BRIDGE)
