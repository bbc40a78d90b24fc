"""A real node beside the kwok pools: containerd + runc, kubelet, kube-proxy, CoreDNS, a pod bridge.

`join(cluster)` starts one on this machine (waiting for the machine-wide lock first) and returns
a RealNode: import an image, pin a pod spec to the node, run a pod and exec in it; `stop()`
takes it down and puts the machine back as it was (notes/real-node.md has the trial it follows).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from clipserve.bench.server import free_ports

from tests.cluster import host, oci, pki
from tests.cluster.harness import REPO, Cluster, KubectlError, _versions
from tests.cluster.node_config import (
    BRIDGE,
    COREDNS_USER,
    K8S_NAMESPACE,
    NODE_IP,
    NODE_NAME,
    PAUSE_IMAGE,
    POD_SUBNET,
    NodeDirs,
    bootstrap_objects,
    cni_conflist,
    containerd_config,
    corefile,
    kube_proxy_config,
    kubelet_args,
    kubelet_config,
    pin,
)
from tests.cluster.processes import Proc, is_running, log_tail, spawn, stop

NODE_BINARIES = ("containerd", "containerd-shim-runc-v2", "ctr", "coredns", "pause", "probe")
RUNC = "/usr/sbin/runc"
CNI_BIN = "/usr/lib/cni"
PROBE_IMAGE = "clipserve.local/probe:test"
SOURCE_LABEL = "clipserve.io/source"
READY_TIMEOUT_S = float(os.environ.get("CLIPSERVE_REAL_NODE_READY_TIMEOUT_S", "180"))
STATE_FILE = "node.json"
FORWARDER = "apiserver-forward"


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


def _dirs(root: Path) -> NodeDirs:
    return NodeDirs(run=root / "run", images=root / "containerd")


def check_prerequisites(cluster_bin: Path, node_bin: Path) -> None:
    """NodeError naming what is missing: root, binaries, Debian's runc and CNI plugins."""
    problems = []
    if os.geteuid() != 0:
        problems.append("must run as root (bridge, iptables, cgroups, mounts)")
    missing = [str(cluster_bin / b) for b in ("kubelet", "kube-proxy")]
    missing += [str(node_bin / b) for b in NODE_BINARIES]
    missing += [RUNC, f"{CNI_BIN}/bridge", f"{CNI_BIN}/host-local"]
    missing = [m for m in missing if not Path(m).is_file()]
    if missing:
        problems.append(
            "missing " + ", ".join(missing) + ": run `bash scripts/build-k8s.sh` and"
            " `bash scripts/build-node.sh` (or `make tools`)"
        )
    if problems:
        raise NodeError("the real node cannot start: " + "; ".join(problems))


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
        if self.image_source(image) == source_id:
            return
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
        dirs = _dirs(root or cache_root())
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
            stop([by_name[n] for n in ("kubelet", "kube-proxy", "coredns") if n in by_name])
            if "containerd" in by_name and is_running(by_name["containerd"]):
                _remove_containers(self)
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


def _remove_containers(node: RealNode) -> None:
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
    host.delete_bridge(BRIDGE)
    shutil.rmtree(dirs.shims, ignore_errors=True)
    host.restore(dirs.run.parent)


def _stop_recorded(dirs: NodeDirs) -> None:
    try:
        data = json.loads((dirs.run / STATE_FILE).read_text())
    except FileNotFoundError:
        return
    stop([Proc(**p) for p in reversed(data["procs"])])


def _url_ok(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return bool(resp.status == 200)
    except OSError:
        return False


def dns_answers(name: str, server: str = NODE_IP) -> bool:
    """True when the DNS server at server:53 answers an A query for name with a record."""
    query = struct.pack(">HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0)
    query += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    query += struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2)
        try:
            sock.sendto(query, (server, 53))
            reply = sock.recv(512)
        except OSError:
            return False
    rcode, answers = reply[3] & 0x0F, struct.unpack(">H", reply[6:8])[0]
    return rcode == 0 and answers > 0


def _node_ready(cluster: Cluster) -> bool:
    try:
        node = json.loads(cluster.kubectl("get", "node", NODE_NAME, "-o", "json"))
    except KubectlError:
        return False
    ready = any(
        c["type"] == "Ready" and c["status"] == "True" for c in node["status"].get("conditions", [])
    )
    taints = {t["key"] for t in node["spec"].get("taints", [])}
    return ready and not any(k.startswith("node.kubernetes.io/") for k in taints)


def join(
    cluster: Cluster,
    root: Path | None = None,
    node_bin: Path | None = None,
    *,
    tie_to_parent: bool = True,
) -> RealNode:
    """Start the real node and join it to cluster; returns once it runs pods and serves DNS."""
    root = root or cache_root()
    node_bin = node_bin or default_node_bin()
    check_prerequisites(cluster.bin_dir, node_bin)
    lock_fd = host.lock_machine(root / "lock")
    dirs = _dirs(root)
    node = RealNode(cluster, dirs, node_bin, lock_fd=lock_fd)
    try:
        _stop_recorded(dirs)
        cleanup(dirs, node_bin, cluster.bin_dir)
        shutil.rmtree(dirs.run, ignore_errors=True)
        host.record(root)
        _start(node, tie_to_parent)
    except BaseException:
        node.stop()
        raise
    return node


@contextlib.contextmanager
def joined(cluster: Cluster) -> Iterator[RealNode]:
    """The real node joined to cluster for the block; stopped (machine restored) after it.

    Test packages hold it as a package-scoped fixture, not for the whole session: there is one
    per machine, and other sessions wait for it.
    """
    node = join(cluster)
    try:
        yield node
    finally:
        node.stop()


def _start(node: RealNode, tie_to_parent: bool) -> None:
    cluster, dirs = node.cluster, node.dirs
    for d in (dirs.config, dirs.logs, dirs.cni_conf, dirs.images):
        d.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + READY_TIMEOUT_S

    def launch(name: str, argv: list[str], **kw: Any) -> None:
        node.procs.append(spawn(name, argv, dirs.logs, tie_to_parent=tie_to_parent, **kw))
        node.save()

    def wait(what: str, check: Callable[[], bool]) -> None:
        while not check():
            dead = [p.name for p in node.procs if not is_running(p)]
            if dead:
                raise NodeError(node.describe_failure(f"{', '.join(dead)} exited while {what}"))
            if time.monotonic() > deadline:
                raise NodeError(node.describe_failure(f"timed out while {what}"))
            time.sleep(0.25)

    host.create_bridge(BRIDGE, f"{NODE_IP}/{POD_SUBNET.split('/')[1]}")
    host.guard_bridge(BRIDGE)
    keys = pki.Pki(cluster.state_dir / "pki")
    kubeconfigs = _identities(cluster, keys, dirs)
    api_port = int(cluster.server.rsplit(":", 1)[1])
    cluster.kubectl(
        "apply", "-f", "-", input="\n---\n".join(json.dumps(o) for o in bootstrap_objects(api_port))
    )
    # The lock travels with the forwarder, so a `make cluster` node keeps it after `up` exits.
    forward = [sys.executable, "-m", "tests.cluster.forward", f"{NODE_IP}:{api_port}",
               f"127.0.0.1:{api_port}"]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    launch(FORWARDER, forward, pass_fds=(node.lock_fd,) if node.lock_fd else (), env=env)

    config = dirs.config
    (config / "containerd.toml").write_text(containerd_config(dirs, node.bin_dir, CNI_BIN, RUNC))
    (dirs.cni_conf / "10-clipserve.conflist").write_text(cni_conflist(dirs))
    launch(
        "containerd", [str(node.bin_dir / "containerd"), f"--config={config / 'containerd.toml'}"]
    )
    wait("waiting for containerd", lambda: _ctr_ok(node))
    broken = [line for line in node.ctr("plugins", "ls").splitlines() if line.endswith(" error")]
    if broken:
        raise NodeError(node.describe_failure("containerd plugins failed: " + "; ".join(broken)))
    _remove_containers(node)  # a crashed run's containers, kept in the persistent store
    node.import_binary_image(node.bin_dir / "pause", PAUSE_IMAGE, ["/pause"])
    node.import_binary_image(node.bin_dir / "probe", PROBE_IMAGE, ["/probe"])

    (config / "Corefile").write_text(corefile(kubeconfigs["coredns"]))
    launch("coredns", [str(node.bin_dir / "coredns"), "-conf", str(config / "Corefile")])
    healthz, metrics = free_ports(2)
    (config / "kube-proxy.yaml").write_text(
        kube_proxy_config(kubeconfigs["kube-proxy"], healthz, metrics)
    )
    proxy = [str(cluster.bin_dir / "kube-proxy"), f"--config={config / 'kube-proxy.yaml'}"]
    launch("kube-proxy", proxy)
    (config / "resolv.conf").write_text(f"nameserver {NODE_IP}\n")
    (config / "kubelet.yaml").write_text(
        kubelet_config(dirs, keys.ca_crt, keys.crt("node-serving"), keys.key("node-serving"))
    )
    launch(
        "kubelet",
        kubelet_args(
            cluster.bin_dir / "kubelet", dirs, config / "kubelet.yaml", kubeconfigs["kubelet"]
        ),
    )
    wait("waiting for the node to be Ready", lambda: _node_ready(cluster))
    wait("waiting for kube-proxy", lambda: _url_ok(f"http://127.0.0.1:{healthz}/healthz"))
    wait("waiting for CoreDNS", lambda: dns_answers("kubernetes.default.svc.cluster.local"))


def _ctr_ok(node: RealNode) -> bool:
    try:
        node.ctr("version", timeout=10)
    except (NodeError, subprocess.TimeoutExpired):
        return False
    return True


def _identities(cluster: Cluster, keys: pki.Pki, dirs: NodeDirs) -> dict[str, Path]:
    """Certificates from the cluster CA for the node's components; their kubeconfigs."""
    pki.issue(keys, "node-kubelet", f"system:node:{NODE_NAME}", "system:nodes")
    pki.issue(keys, "node-serving", NODE_NAME, server_sans=[f"IP:{NODE_IP}", f"DNS:{NODE_NAME}"])
    pki.issue(keys, "kube-proxy", "system:kube-proxy")
    pki.issue(keys, "coredns", COREDNS_USER)
    return {
        name: pki.write_kubeconfig(
            keys, identity, cluster.server, dirs.config / f"{name}.kubeconfig"
        )
        for name, identity in (
            ("kubelet", "node-kubelet"),
            ("kube-proxy", "kube-proxy"),
            ("coredns", "coredns"),
        )
    }
