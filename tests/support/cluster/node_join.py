"""Start the real node on this machine and join it to a cluster (stopping is RealNode.stop)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from clipserve.bench.server import free_ports

from tests.support.cluster import host, pki
from tests.support.cluster.harness import REPO, Cluster, KubectlError
from tests.support.cluster.node_config import (
    BRIDGE,
    COREDNS_USER,
    KUBE_ROUTER_USER,
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
    kube_router_args,
    kubelet_args,
    kubelet_config,
)
from tests.support.cluster.processes import Proc, is_running, spawn, stop
from tests.support.cluster.realnode import (
    CNI_BIN,
    FORWARDER,
    KUBE_ROUTER,
    NODE_BINARIES,
    PROBE_IMAGE,
    RUNC,
    STATE_FILE,
    NodeError,
    RealNode,
    cache_root,
    cleanup,
    default_netpol_bin,
    default_node_bin,
    node_dirs,
    remove_containers,
)

READY_TIMEOUT_S = float(os.environ.get("CLIPSERVE_REAL_NODE_READY_TIMEOUT_S", "180"))


def check_prerequisites(cluster_bin: Path, node_bin: Path, netpol_bin: Path) -> None:
    """NodeError naming what is missing: root, binaries, Debian's runc, CNI plugins and ipset."""
    problems = []
    if os.geteuid() != 0:
        problems.append("must run as root (bridge, iptables, cgroups, mounts)")
    missing = [str(cluster_bin / b) for b in ("kubelet", "kube-proxy")]
    missing += [str(node_bin / b) for b in NODE_BINARIES]
    missing += [str(netpol_bin / KUBE_ROUTER)]
    missing += [RUNC, f"{CNI_BIN}/bridge", f"{CNI_BIN}/host-local"]
    missing = [m for m in missing if not Path(m).is_file()]
    if not shutil.which("ipset"):
        missing.append("ipset (Debian's, which kube-router calls)")
    if missing:
        problems.append(
            "missing " + ", ".join(missing) + ": run `bash scripts/build-k8s.sh`,"
            " `bash scripts/build-node.sh` and `bash scripts/build-netpol.sh` (or `make tools`)"
        )
    if problems:
        raise NodeError("the real node cannot start: " + "; ".join(problems))


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
    netpol_bin: Path | None = None,
    *,
    tie_to_parent: bool = True,
) -> RealNode:
    """Start the real node and join it to cluster; returns once it runs pods, serves DNS and
    enforces NetworkPolicies."""
    root = root or cache_root()
    node_bin = node_bin or default_node_bin()
    netpol_bin = netpol_bin or default_netpol_bin()
    check_prerequisites(cluster.bin_dir, node_bin, netpol_bin)
    # A detached node (make cluster) holds the lock until `make cluster-down`: say so.
    holder = (
        "" if tie_to_parent else "(the real node of `make cluster`; `make cluster-down` stops it)"
    )
    lock_fd = host.lock_machine(root / "lock", holder)
    dirs = node_dirs(root)
    node = RealNode(cluster, dirs, node_bin, lock_fd=lock_fd)
    try:
        _stop_recorded(dirs)
        cleanup(dirs, node_bin, cluster.bin_dir)
        shutil.rmtree(dirs.run, ignore_errors=True)
        host.record(root)
        _start(node, netpol_bin / KUBE_ROUTER, tie_to_parent)
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


def _start(node: RealNode, kube_router: Path, tie_to_parent: bool) -> None:
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
    forward = [sys.executable, "-m", "tests.support.cluster.forward", f"{NODE_IP}:{api_port}",
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
    remove_containers(node)  # a crashed run's containers, kept in the persistent store
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
    # kube-router reads its node's IP from the Node object at start: after the kubelet made it.
    launch(KUBE_ROUTER, kube_router_args(kube_router, kubeconfigs[KUBE_ROUTER]))
    wait("waiting for kube-router's first policy sync", _firewall_synced)


def _firewall_synced() -> bool:
    """True once kube-router has written a full sync: its forward chain ends in the ACCEPT of
    what policies admit, which only a completed sync appends."""
    rules = host.run("iptables", "-w", "-S", "KUBE-ROUTER-FORWARD", check=False)
    return "comply to network policies" in rules


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
    pki.issue(keys, KUBE_ROUTER, KUBE_ROUTER_USER)
    return {
        name: pki.write_kubeconfig(
            keys, identity, cluster.server, dirs.config / f"{name}.kubeconfig"
        )
        for name, identity in (
            ("kubelet", "node-kubelet"),
            ("kube-proxy", "kube-proxy"),
            ("coredns", "coredns"),
            (KUBE_ROUTER, KUBE_ROUTER),
        )
    }
