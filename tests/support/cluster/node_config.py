"""Configuration of the real node's components: pure builders, every path under the node's dirs.

The settings that mattered on these machines (hybrid cgroups, a refused oom_score_adj, no
registry, a fullish disk) are explained where they are set; notes/real-node.md has the trial.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from tests.support.cluster.host import CNI_NETWORK
from tests.support.cluster.pki import SERVICE_CIDR

NODE_NAME = "real-0"
BRIDGE = "clipsrv0"
POD_SUBNET = "10.245.0.0/24"
# The bridge's own address: the node IP, the pods' gateway, and where the host-side services
# (CoreDNS, the API server's forwarder, the kubelet) listen for pods.
NODE_IP = "10.245.0.1"
DNS_SERVICE_IP = "10.96.0.10"
CLUSTER_DOMAIN = "cluster.local"
POOL_LABEL = {"clipserve.io/node-pool": "real"}
# Pods land on the real node only when they ask to (nodeSelector + toleration), never by chance.
TAINT = {"key": "clipserve.io/real-node", "value": "true", "effect": "NoSchedule"}
TOLERATION = {"key": TAINT["key"], "operator": "Exists", "effect": TAINT["effect"]}
# The sandbox image containerd 2.3 asks for; built here (scripts/node/pause) as none can be pulled.
PAUSE_IMAGE = "registry.k8s.io/pause:3.10.2"
KUBELET_PORT = 10250
K8S_NAMESPACE = "k8s.io"  # containerd namespace of the CRI


@dataclass(frozen=True)
class NodeDirs:
    """Where each component keeps its files: a per-run tree, plus the persistent image store."""

    run: Path  # wiped at every start (after the leftovers of a crashed run are undone)
    images: Path  # containerd's root (content and snapshots): imported images survive runs
    # containerd refuses a shim socket dir longer than 42 characters: a short one under /run.
    shims: Path = Path("/run/clipserve/node-shims")

    @property
    def containerd_state(self) -> Path:
        """containerd's state dir (sockets, task bundles, rootfs and netns mounts)."""
        return self.run / "containerd"

    @property
    def containerd_socket(self) -> Path:
        """containerd's gRPC socket (the CRI endpoint)."""
        return self.containerd_state / "containerd.sock"

    @property
    def runc_root(self) -> Path:
        """runc's state, one folder per containerd namespace."""
        return self.run / "runc"

    @property
    def kubelet_root(self) -> Path:
        """The kubelet's --root-dir (it bind-mounts it onto itself)."""
        return self.run / "kubelet"

    @property
    def cni_conf(self) -> Path:
        """The folder containerd reads the CNI network from."""
        return self.run / "cni" / "net.d"

    @property
    def config(self) -> Path:
        """Configuration files and kubeconfigs."""
        return self.run / "config"

    @property
    def logs(self) -> Path:
        """Component logs."""
        return self.run / "logs"


def containerd_config(dirs: NodeDirs, node_bin: Path, cni_bin: str, runc: str) -> str:
    """containerd 2.3 config (version 4): every path under the node's dirs, CRI with runc."""
    state, sock = dirs.containerd_state, dirs.containerd_socket
    runtime = "[plugins.'io.containerd.cri.v1.runtime'"
    runc_table = f"{runtime}.containerd.runtimes.runc"
    q = json.dumps  # TOML basic strings take JSON's escapes
    return f"""version = 4
root = {q(str(dirs.images))}
state = {q(str(state))}
temp = {q(str(dirs.run / "tmp"))}
# The machine's /etc/containerd/conf.d must not change this node.
imports = []

[plugins]
  [plugins.'io.containerd.server.v1.grpc']
    address = {q(str(sock))}
  [plugins.'io.containerd.server.v1.ttrpc']
    address = {q(str(sock) + ".ttrpc")}
  [plugins.'io.containerd.shim.v1.manager']
    socket_dir = {q(str(dirs.shims))}
  [plugins.'io.containerd.internal.v1.opt']
    path = {q(str(dirs.run / "opt"))}
  [plugins.'io.containerd.nri.v1.nri']
    disable = true

  [plugins.'io.containerd.cri.v1.images']
    snapshotter = 'overlayfs'
    [plugins.'io.containerd.cri.v1.images'.pinned_images]
      sandbox = {q(PAUSE_IMAGE)}

  {runtime}]
    # The sandbox asks for oom_score_adj -998, which this machine refuses: clamp it to what
    # the runtime itself may set.
    restrict_oom_score_adj = true
    # Pod network namespaces under the state dir, not /run/netns.
    netns_mounts_under_state_dir = true
    {runtime}.containerd]
      default_runtime_name = 'runc'
    {runc_table}]
      runtime_type = 'io.containerd.runc.v2'
      # The shim built with this containerd (Debian's older shim may be first on PATH).
      runtime_path = {q(str(node_bin / "containerd-shim-runc-v2"))}
    {runc_table}.options]
      BinaryName = {q(runc)}
      Root = {q(str(dirs.runc_root))}
      SystemdCgroup = false
    {runtime}.cni]
      bin_dirs = [{q(cni_bin)}]
      conf_dir = {q(str(dirs.cni_conf))}
      max_conf_num = 1
      # containerd sets up each pod's loopback itself (no CNI loopback plugin needed).
      use_internal_loopback = true

  [plugins.'io.containerd.grpc.v1.cri']
    # Streaming (exec, attach, port-forward) on loopback only; the kubelet proxies it.
    stream_server_address = '127.0.0.1'
    stream_server_port = '0'
"""


def cni_conflist(dirs: NodeDirs) -> str:
    """The pods' network: our bridge, host-local IPs, a route to Services only, no masquerade."""
    config = {
        "cniVersion": "1.0.0",
        "name": CNI_NETWORK,
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_SUBNET, "gateway": NODE_IP}]],
                    # No default route: a pod reaches its subnet and the Service CIDR, nothing
                    # beyond the machine.
                    "routes": [{"dst": SERVICE_CIDR}],
                    "dataDir": str(dirs.run / "cni" / "ipam"),
                },
            }
        ],
    }
    return json.dumps(config, indent=2)


def kubelet_config(dirs: NodeDirs, ca: Path, tls_cert: Path, tls_key: Path) -> str:
    """KubeletConfiguration for this machine (cgroups v1+v2 hybrid, cgroupfs, a shared disk)."""
    config: dict[str, Any] = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        # Hybrid v1+v2 cgroups here; kubelet 1.35+ refuses cgroup v1 without this.
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "containerRuntimeEndpoint": f"unix://{dirs.containerd_socket}",
        "address": NODE_IP,
        "port": KUBELET_PORT,
        "readOnlyPort": 0,
        "healthzPort": 0,
        "tlsCertFile": str(tls_cert),
        "tlsPrivateKeyFile": str(tls_key),
        # Only the API server (its kubelet client certificate, checked by RBAC) may call us.
        "authentication": {
            "anonymous": {"enabled": False},
            "webhook": {"enabled": True},
            "x509": {"clientCAFile": str(ca)},
        },
        "authorization": {"mode": "Webhook"},
        "clusterDomain": CLUSTER_DOMAIN,
        "clusterDNS": [DNS_SERVICE_IP],
        "resolvConf": str(dirs.config / "resolv.conf"),
        # Leave the machine's kernel settings alone where the kubelet allows it.
        "protectKernelDefaults": False,
        "failSwapOn": False,
        # A shared, fairly full disk must not put the node under DiskPressure or evict pods.
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "nodefs.inodesFree": "1%",
            "imagefs.available": "1%",
            "imagefs.inodesFree": "1%",
        },
        "imageGCHighThresholdPercent": 99,
        "imageGCLowThresholdPercent": 98,
        "podLogsDir": str(dirs.run / "pod-logs"),
        "volumePluginDir": str(dirs.run / "volume-plugins"),
        "registerWithTaints": [TAINT],
        "serializeImagePulls": False,
        "maxPods": 30,
        "oomScoreAdj": 0,
    }
    return yaml.safe_dump(config, sort_keys=False)


def kubelet_args(kubelet: Path, dirs: NodeDirs, config: Path, kubeconfig: Path) -> list[str]:
    """kubelet command line (flags the config file cannot carry)."""
    labels = ",".join(f"{k}={v}" for k, v in POOL_LABEL.items())
    return [
        str(kubelet),
        f"--config={config}",
        f"--kubeconfig={kubeconfig}",
        f"--root-dir={dirs.kubelet_root}",
        f"--cert-dir={dirs.run / 'kubelet-pki'}",
        f"--hostname-override={NODE_NAME}",
        f"--node-ip={NODE_IP}",
        f"--node-labels={labels}",
        "--v=1",
    ]


def kube_proxy_config(kubeconfig: Path, healthz_port: int, metrics_port: int) -> str:
    """kube-proxy in iptables mode, touching as little of the machine as it can."""
    config = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
        "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "hostnameOverride": NODE_NAME,
        "mode": "iptables",
        "clusterCIDR": POD_SUBNET,
        "healthzBindAddress": f"127.0.0.1:{healthz_port}",
        "metricsBindAddress": f"127.0.0.1:{metrics_port}",
        "nodePortAddresses": [f"{NODE_IP}/32"],
        # Zeroes leave the machine's conntrack sysctls as they are.
        "conntrack": {
            "maxPerCore": 0,
            "min": 0,
            "tcpEstablishedTimeout": "0s",
            "tcpCloseWaitTimeout": "0s",
        },
        # localhostNodePorts would set route_localnet on every interface.
        "iptables": {"localhostNodePorts": False},
        "oomScoreAdj": 0,
    }
    return yaml.safe_dump(config, sort_keys=False)


def kube_router_args(kube_router: Path, kubeconfig: Path) -> list[str]:
    """kube-router as the node's NetworkPolicy enforcer only: iptables + ipset, nothing else.

    The bridge plugin enforces no policy; kube-router's firewall does, for the pods whose host
    IP is this node's. Its router (BGP, routes, the CNI config) and its service proxy (IPVS)
    stay off: the bridge and kube-proxy do those. Its health server would listen on every
    address: off, and start-up is checked in iptables instead.
    """
    return [
        str(kube_router),
        f"--kubeconfig={kubeconfig}",
        f"--hostname-override={NODE_NAME}",
        "--run-firewall=true",
        "--run-router=false",
        "--run-service-proxy=false",
        "--run-loadbalancer=false",
        "--enable-cni=false",
        "--enable-ipv6=false",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--health-port=0",
        "--metrics-port=0",
    ]


def corefile(kubeconfig: Path) -> str:
    """CoreDNS: cluster names from the API server on the node IP; every other name NXDOMAIN."""
    return f"""{CLUSTER_DOMAIN}:53 in-addr.arpa:53 ip6.arpa:53 {{
    bind {NODE_IP}
    errors
    kubernetes {CLUSTER_DOMAIN} in-addr.arpa ip6.arpa {{
        kubeconfig {kubeconfig} clipserve-test
        pods insecure
    }}
}}
.:53 {{
    bind {NODE_IP}
    errors
    # Never forward a query off the machine.
    template ANY ANY {{
        rcode NXDOMAIN
    }}
}}
"""


def pin(pod_spec: dict[str, Any]) -> dict[str, Any]:
    """A copy of pod_spec that runs on the real node (its pool label and its taint)."""
    spec = dict(pod_spec)
    spec["nodeSelector"] = {**spec.get("nodeSelector", {}), **POOL_LABEL}
    spec["tolerations"] = [*spec.get("tolerations", []), TOLERATION]
    return spec


def _binding(name: str, role: str, kind: str, subject: str) -> dict[str, Any]:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "ClusterRoleBinding",
        "metadata": {"name": name},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "ClusterRole", "name": role},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": subject}],
    }


def _endpoint_slice(
    name: str, namespace: str, service: str, ports: list[dict[str, Any]]
) -> dict[str, Any]:
    return {
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": {
                "kubernetes.io/service-name": service,
                "endpointslice.kubernetes.io/managed-by": "clipserve-test-harness",
            },
        },
        "addressType": "IPv4",
        "endpoints": [{"addresses": [NODE_IP], "conditions": {"ready": True}}],
        "ports": ports,
    }


COREDNS_USER = "clipserve:coredns"
KUBE_ROUTER_USER = "clipserve:kube-router"


def bootstrap_objects(apiserver_port: int) -> list[dict[str, Any]]:
    """RBAC for the node's components, the kube-dns Service, and where both Services lead."""
    dns_ports = [
        {"name": "dns", "port": 53, "protocol": "UDP"},
        {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
    ]
    return [
        # RBAC is the only authorizer here (no Node authorizer): the kubelets' group gets the
        # role that authorizer would otherwise stand in for.
        _binding("clipserve:nodes", "system:node", "Group", "system:nodes"),
        _binding(
            "clipserve:apiserver-kubelet-client",
            "system:kubelet-api-admin",
            "User",
            "kube-apiserver-kubelet-client",
        ),
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "clipserve:coredns"},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["services", "pods", "namespaces"],
                    "verbs": ["list", "watch"],
                },
                {
                    "apiGroups": ["discovery.k8s.io"],
                    "resources": ["endpointslices"],
                    "verbs": ["list", "watch"],
                },
            ],
        },
        _binding("clipserve:coredns", "clipserve:coredns", "User", COREDNS_USER),
        # kube-router reads (its informers start for every kind it can use, firewall-only too)
        # and writes nothing.
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "ClusterRole",
            "metadata": {"name": "clipserve:kube-router"},
            "rules": [
                {
                    "apiGroups": [""],
                    "resources": ["pods", "namespaces", "nodes", "services", "endpoints"],
                    "verbs": ["get", "list", "watch"],
                },
                {
                    "apiGroups": ["discovery.k8s.io"],
                    "resources": ["endpointslices"],
                    "verbs": ["get", "list", "watch"],
                },
                {
                    "apiGroups": ["networking.k8s.io"],
                    "resources": ["networkpolicies"],
                    "verbs": ["get", "list", "watch"],
                },
            ],
        },
        _binding("clipserve:kube-router", "clipserve:kube-router", "User", KUBE_ROUTER_USER),
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": "kube-dns", "namespace": "kube-system"},
            "spec": {
                "clusterIP": DNS_SERVICE_IP,
                "ports": [{**p, "targetPort": 53} for p in dns_ports],
            },
        },
        _endpoint_slice("kube-dns-real-node", "kube-system", "kube-dns", dns_ports),
        # The API server's own Service: its endpoint is the forwarder on the node IP.
        _endpoint_slice(
            "kubernetes",
            "default",
            "kubernetes",
            [{"name": "https", "port": apiserver_port, "protocol": "TCP"}],
        ),
    ]
