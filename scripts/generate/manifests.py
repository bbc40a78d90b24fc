"""manifests/ for installs without Helm, from the charts, their one source: the CRD, the
operator's RBAC and Deployment (`kubectl apply -f manifests/crd -f manifests/rbac -f
manifests/operator`), and the Grafana dashboard."""

from __future__ import annotations

import functools
import subprocess
from collections.abc import Callable

from .artefact import ROOT, Artefact

OPERATOR_CHART = "charts/clipserve-operator"
CRD = f"{OPERATOR_CHART}/crds/clipservices.yaml"
DASHBOARD = "charts/clipserve/dashboards/clipserve.json"
NAMESPACE = "clipserve-system"
HEADER = f"# Generated from {OPERATOR_CHART} by `make generate`; do not edit.\n"


def _run(*args: str) -> str:
    proc = subprocess.run(args, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


@functools.cache
def helm() -> str:
    """The pinned helm binary; scripts/install-helm.sh fetches it once and prints its path."""
    return _run("bash", str(ROOT / "scripts/install-helm.sh")).strip().splitlines()[-1]


def render(template: str) -> str:
    """One template of the operator chart installed in clipserve-system, helm's `# Source:`
    lines left out (they name the chart's files, which a plain manifest does not come with)."""
    out = _run(
        helm(),
        "template",
        "clipserve-operator",
        str(ROOT / OPERATOR_CHART),
        "--namespace",
        NAMESPACE,
        "--show-only",
        f"templates/{template}",
    )
    return "".join(line for line in out.splitlines(True) if not line.startswith("# Source: "))


def copy(source: str) -> Callable[[], str]:
    return lambda: (ROOT / source).read_text(encoding="utf-8")


def rbac() -> str:
    return HEADER + render("operator-serviceaccount.yaml") + render("operator-clusterrole.yaml")


def operator() -> str:
    """The operator and its metrics Service, with the namespace the RBAC file's objects use."""
    namespace = f"---\napiVersion: v1\nkind: Namespace\nmetadata:\n  name: {NAMESPACE}\n"
    return HEADER + namespace + render("operator-deployment.yaml") + render("metrics-service.yaml")


# The CRD and the dashboard are copied byte for byte, without a header (JSON has no comments);
# the CRD's own comment names the file to edit.
CRD_COPY = Artefact("manifests/crd/clipservices.yaml", CRD, copy(CRD))
JOB_CRD = f"{OPERATOR_CHART}/crds/clipjobs.yaml"
JOB_CRD_COPY = Artefact("manifests/crd/clipjobs.yaml", JOB_CRD, copy(JOB_CRD))
DASHBOARD_COPY = Artefact("manifests/grafana/clipserve.json", DASHBOARD, copy(DASHBOARD))
RENDERED = [
    Artefact("manifests/rbac/clipserve-operator.yaml", OPERATOR_CHART, rbac),
    Artefact("manifests/operator/clipserve-operator.yaml", OPERATOR_CHART, operator),
]
ARTEFACTS = [CRD_COPY, JOB_CRD_COPY, *RENDERED, DASHBOARD_COPY]
