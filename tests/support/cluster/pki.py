"""Certificates, service-account key and kubeconfigs for the local control plane (openssl CLI)."""

from __future__ import annotations

import base64
import subprocess
from dataclasses import dataclass
from pathlib import Path

import yaml

# The apiserver's serving cert must also be valid for the in-cluster service names and the
# first IP of the service CIDR, as a real cluster's is.
SERVICE_CIDR = "10.96.0.0/16"
APISERVER_SANS = (
    "IP:127.0.0.1",
    "IP:10.96.0.1",
    "DNS:localhost",
    "DNS:kubernetes",
    "DNS:kubernetes.default",
    "DNS:kubernetes.default.svc",
    "DNS:kubernetes.default.svc.cluster.local",
)
# Client identities: name -> (CN, O). The component names are the ones bootstrap RBAC binds.
CLIENTS = {
    "admin": ("clipserve-admin", "system:masters"),
    "controller-manager": ("system:kube-controller-manager", ""),
    "scheduler": ("system:kube-scheduler", ""),
    "kwok": ("kwok-controller", "system:masters"),
    # The API server's identity towards kubelets (logs, exec); RBAC grants it kubelet-api-admin.
    "apiserver-kubelet-client": ("kube-apiserver-kubelet-client", ""),
}
FRONT_PROXY_CA = "front-proxy-ca"
FRONT_PROXY_CLIENT = "front-proxy-client"
DAYS = "30"


@dataclass(frozen=True)
class Pki:
    """Paths of the generated key material."""

    dir: Path

    @property
    def ca_crt(self) -> Path:
        """CA certificate (signs serving and client certs)."""
        return self.dir / "ca.crt"

    @property
    def ca_key(self) -> Path:
        """CA private key (also used by the controller-manager's CSR signer)."""
        return self.dir / "ca.key"

    @property
    def sa_key(self) -> Path:
        """Service-account token signing key."""
        return self.dir / "sa.key"

    @property
    def sa_pub(self) -> Path:
        """Service-account token verification key."""
        return self.dir / "sa.pub"

    def crt(self, name: str) -> Path:
        """Certificate for a named identity."""
        return self.dir / f"{name}.crt"

    def key(self, name: str) -> Path:
        """Private key for a named identity."""
        return self.dir / f"{name}.key"


def _openssl(*args: str | Path) -> None:
    subprocess.run(["openssl", *map(str, args)], check=True, capture_output=True)


def _ec_key(path: Path) -> None:
    _openssl("genpkey", "-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256", "-out", path)
    path.chmod(0o600)


def _ca(pki: Pki, name: str, subject: str) -> None:
    _ec_key(pki.key(name))
    _openssl(
        "req", "-x509", "-new", "-key", pki.key(name), "-subj", subject,
        "-days", DAYS, "-sha256", "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign", "-out", pki.crt(name),
    )  # fmt: skip


def _signed_cert(pki: Pki, name: str, subject: str, extensions: list[str], ca: str = "ca") -> None:
    _ec_key(pki.key(name))
    csr, ext = pki.dir / f"{name}.csr", pki.dir / f"{name}.ext"
    ext.write_text("\n".join(["basicConstraints=critical,CA:FALSE", *extensions]) + "\n")
    _openssl("req", "-new", "-key", pki.key(name), "-subj", subject, "-out", csr)
    _openssl(
        "x509", "-req", "-in", csr, "-CA", pki.crt(ca), "-CAkey", pki.key(ca),
        "-CAcreateserial", "-days", DAYS, "-sha256", "-extfile", ext, "-out", pki.crt(name),
    )  # fmt: skip
    csr.unlink()
    ext.unlink()


CLIENT_EXTENSIONS = ["keyUsage=critical,digitalSignature", "extendedKeyUsage=clientAuth"]


def issue(
    pki: Pki, name: str, cn: str, org: str = "", server_sans: list[str] | None = None
) -> None:
    """A certificate from the cluster CA: a client cert, or a serving cert for server_sans."""
    subject = f"/CN={cn}" + (f"/O={org}" if org else "")
    if server_sans is None:
        _signed_cert(pki, name, subject, CLIENT_EXTENSIONS)
        return
    server_ext = [
        "keyUsage=critical,digitalSignature",
        "extendedKeyUsage=serverAuth",
        "subjectAltName=" + ",".join(server_sans),
    ]
    _signed_cert(pki, name, subject, server_ext)


def generate(directory: Path) -> Pki:
    """Create a CA, the apiserver serving cert, client certs and the service-account key pair."""
    directory.mkdir(parents=True, exist_ok=True)
    pki = Pki(directory)
    _ca(pki, "ca", "/CN=clipserve-test-ca")
    _signed_cert(
        pki, "apiserver", "/CN=kube-apiserver",
        ["keyUsage=critical,digitalSignature", "extendedKeyUsage=serverAuth",
         "subjectAltName=" + ",".join(APISERVER_SANS)],
    )  # fmt: skip
    for name, (cn, org) in CLIENTS.items():
        issue(pki, name, cn, org)
    # The aggregation layer's front proxy gets its own CA, so no ordinary client cert can
    # assert identities through request headers.
    _ca(pki, FRONT_PROXY_CA, "/CN=clipserve-test-front-proxy-ca")
    _signed_cert(
        pki, FRONT_PROXY_CLIENT, f"/CN={FRONT_PROXY_CLIENT}", CLIENT_EXTENSIONS, FRONT_PROXY_CA
    )
    _openssl("genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048", "-out", pki.sa_key)
    pki.sa_key.chmod(0o600)
    _openssl("pkey", "-in", pki.sa_key, "-pubout", "-out", pki.sa_pub)
    return pki


def _b64(path: Path) -> str:
    return base64.b64encode(path.read_bytes()).decode()


def write_kubeconfig(pki: Pki, user: str, server: str, path: Path) -> Path:
    """Write a self-contained kubeconfig (embedded certs) for one client identity."""
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {
                "name": "clipserve-test",
                "cluster": {"server": server, "certificate-authority-data": _b64(pki.ca_crt)},
            }
        ],
        "users": [
            {
                "name": user,
                "user": {
                    "client-certificate-data": _b64(pki.crt(user)),
                    "client-key-data": _b64(pki.key(user)),
                },
            }
        ],
        "contexts": [
            {"name": "clipserve-test", "context": {"cluster": "clipserve-test", "user": user}}
        ],
        "current-context": "clipserve-test",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path
