"""Start-up checks: helm, the chart and the CRD, each failing with one line that says what to do."""

from __future__ import annotations

import asyncio
import re
import shutil
import subprocess
from pathlib import Path

import kopf

from .constants import (
    API_VERSION,
    CRD_NAME,
    CRD_REVISION,
    CRD_REVISION_ANNOTATION,
    JOB_CRD_NAME,
    JOB_KIND,
    KIND,
    VERSION,
    Obj,
)
from .errors import ApiError, HelmNotFound, RenderFailed
from .kube import KubeClient, connection_info
from .render import chart_values, helm_template
from .settings import Settings

# `helm template` flags the operator uses (--skip-tests, --api-versions) and JSON-schema values
# checks behave the same from helm 3.8 on; helm 4 is not tried yet.
HELM_SUPPORTED = ((3, 8), (4, 0))
_INSTALL_HELM = Path(__file__).resolve().parents[2] / "scripts" / "install-helm.sh"
_PROBE = "clipserve-startup-check"


class StartupError(Exception):
    """A start-up check failed; the message is the one line the command prints."""


def find_helm(helm: str) -> str:
    """The helm binary's path: a path as given, a bare name from PATH."""
    found = shutil.which(helm)
    if found:
        return found
    where = (
        f"{helm} does not exist or is not executable" if "/" in helm else f"{helm!r} is not on PATH"
    )
    hint = "install helm 3.8+ or pass --helm PATH (CLIPSERVE_OPERATOR_HELM)"
    if _INSTALL_HELM.is_file():  # running from a checkout: the project pins and caches a helm
        hint += f'; this checkout\'s pinned one: --helm "$(bash {_INSTALL_HELM} | tail -1)"'
    raise StartupError(f"helm not found: {where}; {hint}")


def check_helm_version(helm: str) -> str:
    """helm's version ("v3.17.3"), refused outside HELM_SUPPORTED."""
    try:
        proc = subprocess.run(
            [helm, "version", "--template", "{{.Version}}"],
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise StartupError(f"{helm} does not run: {exc}") from exc
    found = re.match(r"v(\d+)\.(\d+)", proc.stdout.strip())
    if proc.returncode != 0 or not found:
        detail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        raise StartupError(f"{helm} is not a working helm (`helm version`: {detail[0]})")
    low, high = HELM_SUPPORTED
    if not low <= (int(found[1]), int(found[2])) < high:
        raise StartupError(
            f"{helm} is helm {proc.stdout.strip()}; clipserve-operator needs helm "
            f"{low[0]}.{low[1]} or newer, below {high[0]}.{high[1]}"
        )
    return proc.stdout.strip()


def check_chart(helm: str, chart: str) -> None:
    """The chart renders the objects the operator relies on, from the values it would give."""
    if not (Path(chart) / "Chart.yaml").is_file():
        raise StartupError(
            f"chart not found: {chart} has no Chart.yaml; pass --chart DIR "
            "(CLIPSERVE_OPERATOR_CHART)"
        )
    values = chart_values(
        _PROBE,
        {"model": "ViT-B-32:random"},
        model="ViT-B-32:random",
        slot="blue",
        service_slot="blue",
    )
    try:
        objects = helm_template(helm, chart, _PROBE, "default", values)
    except (HelmNotFound, RenderFailed) as exc:
        raise StartupError(f"chart {chart} does not render: {exc}") from exc
    kinds = {(o.get("kind"), o.get("metadata", {}).get("name")) for o in objects}
    for want in (("Deployment", f"{_PROBE}-blue"), ("Service", _PROBE)):
        if want not in kinds:
            raise StartupError(
                f"chart {chart} is not a clipserve chart: it renders no {want[0]} {want[1]}"
            )


# The CRDs this operator serves, by the kind each defines (both ship in the chart's crds/).
_CRDS = {CRD_NAME: KIND, JOB_CRD_NAME: JOB_KIND}


async def _crds(client: KubeClient) -> dict[str, Obj | None]:
    try:
        base = "/apis/apiextensions.k8s.io/v1/customresourcedefinitions"
        return {name: await client.request("GET", f"{base}/{name}") for name in _CRDS}
    finally:
        await client.close()


def check_crd() -> None:
    """The ClipService and ClipJob CRDs are installed, serve this operator's version and schema
    revision."""
    try:
        client = KubeClient(lambda: connection_info(kopf.OperatorSettings()))
    except kopf.LoginError as exc:
        raise StartupError(
            "no cluster credentials: no in-cluster service account and no kubeconfig "
            "($KUBECONFIG or ~/.kube/config)"
        ) from exc
    except Exception as exc:  # unreadable or malformed: kopf raises whatever the parser does
        raise StartupError(f"cannot load the kubeconfig: {type(exc).__name__}: {exc}") from exc
    try:
        crds = asyncio.run(_crds(client))
    except ApiError as exc:
        if exc.status == 0:
            raise StartupError(f"cannot reach the API server: {exc}") from exc
        raise StartupError(f"cannot read the CRD {CRD_NAME}: {exc}") from exc
    for name, crd in crds.items():
        _check_one(name, crd)


def _check_one(name: str, crd: Obj | None) -> None:
    install = "kubectl apply -f manifests/crd/ (helm install/upgrade never updates a CRD)"
    if crd is None:
        raise StartupError(f"the {_CRDS[name]} CRD {name} is not installed: {install}")
    spec = crd.get("spec") or {}
    served = [v["name"] for v in spec.get("versions", []) if v.get("served")]
    if VERSION not in served:
        raise StartupError(
            f"the installed CRD {name} serves {served}, not {API_VERSION}: {install}"
        )
    annotations = (crd.get("metadata") or {}).get("annotations") or {}
    revision = annotations.get(CRD_REVISION_ANNOTATION, "0")
    if revision != CRD_REVISION:
        raise StartupError(
            f"the installed CRD {name} is revision {revision}, this operator needs revision "
            f"{CRD_REVISION}: {install}"
        )


def run_checks(settings: Settings) -> None:
    """Every start-up check in order (helm, chart, CRD); StartupError on the first failure."""
    helm = find_helm(settings.helm)
    check_helm_version(helm)
    check_chart(helm, settings.chart)
    check_crd()
