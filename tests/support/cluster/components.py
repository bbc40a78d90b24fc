"""Command lines of the control-plane components, all bound to 127.0.0.1 on given ports."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from tests.support.cluster.pki import FRONT_PROXY_CA, FRONT_PROXY_CLIENT, SERVICE_CIDR, Pki

POD_CIDR = "10.244.0.0/16"
ETCD_NAME = "clipserve-test"
# kwok manages only Node objects carrying this annotation (set in nodes.yaml).
KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node=fake"


@dataclass(frozen=True)
class Ports:
    """Loopback ports chosen at start-up, so several clusters can run side by side."""

    etcd_client: int
    etcd_peer: int
    apiserver: int
    controller_manager: int
    scheduler: int


def etcd(bin_dir: Path, state: Path, ports: Ports) -> list[str]:
    """Single-member etcd; fsync off because the data lives only as long as the test run."""
    client = f"http://127.0.0.1:{ports.etcd_client}"
    peer = f"http://127.0.0.1:{ports.etcd_peer}"
    return [
        str(bin_dir / "etcd"),
        f"--name={ETCD_NAME}",
        f"--data-dir={state / 'etcd'}",
        f"--listen-client-urls={client}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer}",
        f"--initial-advertise-peer-urls={peer}",
        f"--initial-cluster={ETCD_NAME}={peer}",
        "--unsafe-no-fsync",
        "--log-level=warn",
    ]


def apiserver(bin_dir: Path, pki: Pki, ports: Ports) -> list[str]:
    """kube-apiserver with RBAC (so RBAC mistakes in the chart/operator fail here too)."""
    return [
        str(bin_dir / "kube-apiserver"),
        f"--etcd-servers=http://127.0.0.1:{ports.etcd_client}",
        "--bind-address=127.0.0.1",
        "--advertise-address=127.0.0.1",
        f"--secure-port={ports.apiserver}",
        f"--tls-cert-file={pki.crt('apiserver')}",
        f"--tls-private-key-file={pki.key('apiserver')}",
        f"--client-ca-file={pki.ca_crt}",
        "--authorization-mode=RBAC",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
        "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
        f"--service-account-key-file={pki.sa_pub}",
        f"--service-account-signing-key-file={pki.sa_key}",
        # Front-proxy (aggregation layer) trust, which controllers' delegated auth also reads.
        f"--requestheader-client-ca-file={pki.crt(FRONT_PROXY_CA)}",
        f"--requestheader-allowed-names={FRONT_PROXY_CLIENT}",
        "--requestheader-username-headers=X-Remote-User",
        "--requestheader-group-headers=X-Remote-Group",
        "--requestheader-extra-headers-prefix=X-Remote-Extra-",
        f"--proxy-client-cert-file={pki.crt(FRONT_PROXY_CLIENT)}",
        f"--proxy-client-key-file={pki.key(FRONT_PROXY_CLIENT)}",
        # Call aggregated APIs (custom and external metrics) at their pods' IPs, not their
        # Service IP: this API server is a host process outside the pod network (as on
        # managed control planes), and pods have no route back to a host address from which
        # a Service IP would be dialled.
        "--enable-aggregator-routing=true",
        # The default reconciler would publish 127.0.0.1 as the `kubernetes` Service endpoint,
        # which Endpoints validation rejects; the real node publishes its forwarder instead.
        "--endpoint-reconciler-type=none",
        # Reach kubelets (logs, exec, port-forward) by node IP, never through the machine's
        # resolver, verifying their serving certificates and showing them our own.
        "--kubelet-preferred-address-types=InternalIP,Hostname",
        f"--kubelet-certificate-authority={pki.ca_crt}",
        f"--kubelet-client-certificate={pki.crt('apiserver-kubelet-client')}",
        f"--kubelet-client-key={pki.key('apiserver-kubelet-client')}",
        "--allow-privileged=true",
        "--profiling=false",
    ]


def _delegated_auth(kubeconfig: Path) -> list[str]:
    return [
        f"--kubeconfig={kubeconfig}",
        f"--authentication-kubeconfig={kubeconfig}",
        f"--authorization-kubeconfig={kubeconfig}",
    ]


def controller_manager(
    bin_dir: Path, state: Path, pki: Pki, kubeconfig: Path, ports: Ports
) -> list[str]:
    """kube-controller-manager running every default controller, each with its own SA."""
    return [
        str(bin_dir / "kube-controller-manager"),
        *_delegated_auth(kubeconfig),
        "--bind-address=127.0.0.1",
        f"--secure-port={ports.controller_manager}",
        f"--cert-dir={state / 'controller-manager-certs'}",
        "--leader-elect=false",
        # "*" = all default-on controllers: deployment, replicaset, endpointslice,
        # garbage-collector, namespace, serviceaccount(-token), horizontalpodautoscaling, ...
        "--controllers=*",
        "--use-service-account-credentials=true",
        f"--service-account-private-key-file={pki.sa_key}",
        f"--root-ca-file={pki.ca_crt}",
        f"--cluster-signing-cert-file={pki.ca_crt}",
        f"--cluster-signing-key-file={pki.ca_key}",
        # Default is under /usr/libexec, which it would create on the host.
        f"--flex-volume-plugin-dir={state / 'flexvolume'}",
        f"--service-cluster-ip-range={SERVICE_CIDR}",
    ]


def scheduler(bin_dir: Path, state: Path, kubeconfig: Path, ports: Ports) -> list[str]:
    """kube-scheduler with the default profile."""
    return [
        str(bin_dir / "kube-scheduler"),
        *_delegated_auth(kubeconfig),
        "--bind-address=127.0.0.1",
        f"--secure-port={ports.scheduler}",
        f"--cert-dir={state / 'scheduler-certs'}",
        "--leader-elect=false",
    ]


def kwok(bin_dir: Path, stages: Path, kubeconfig: Path) -> list[str]:
    """kwok playing kubelet for annotated nodes: leases, node status and pod lifecycle stages."""
    return [
        str(bin_dir / "kwok"),
        f"--kubeconfig={kubeconfig}",
        f"--config={stages}",
        "--manage-all-nodes=false",
        f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}",
        "--node-lease-duration-seconds=40",
        f"--cidr={POD_CIDR}",
    ]
