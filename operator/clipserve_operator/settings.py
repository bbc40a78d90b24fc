"""Operator configuration: one typed object built once from CLIPSERVE_OPERATOR_* variables."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path


def _default_chart() -> str:
    """The chart bundled in the image, else the one in this source tree."""
    bundled = Path("/opt/clipserve/charts/clipserve")
    if bundled.is_dir():
        return str(bundled)
    return str(Path(__file__).resolve().parents[2] / "charts" / "clipserve")


@dataclass(frozen=True)
class Settings:
    """Operator settings; each field maps to one CLIPSERVE_OPERATOR_* variable."""

    # CLIPSERVE_OPERATOR_HELM: helm 3 binary used for `helm template`.
    helm: str = "helm"
    # CLIPSERVE_OPERATOR_CHART: directory of the clipserve chart rendered for every ClipService.
    chart: str = field(default_factory=_default_chart)
    # CLIPSERVE_OPERATOR_METRICS_PORT: port of the operator's /metrics (0 = off).
    metrics_port: int = 8080
    # CLIPSERVE_OPERATOR_RETRY_DELAY_S: wait before retrying a reconcile after a transient error.
    retry_delay_s: float = 5.0
    # CLIPSERVE_OPERATOR_RESYNC_S: reconcile every ClipService this often (safety net; 0 = off).
    resync_s: float = 300.0
    # CLIPSERVE_OPERATOR_CLUSTER_DOMAIN: DNS suffix used in status.endpoint.
    cluster_domain: str = "cluster.local"

    @classmethod
    def from_env(cls, env: dict[str, str] | None = None) -> Settings:
        """Build settings from the environment (defaults for unset variables)."""
        env = dict(os.environ if env is None else env)
        base = cls()
        return cls(
            helm=env.get("CLIPSERVE_OPERATOR_HELM", base.helm),
            chart=env.get("CLIPSERVE_OPERATOR_CHART", base.chart),
            metrics_port=int(env.get("CLIPSERVE_OPERATOR_METRICS_PORT", base.metrics_port)),
            retry_delay_s=float(env.get("CLIPSERVE_OPERATOR_RETRY_DELAY_S", base.retry_delay_s)),
            resync_s=float(env.get("CLIPSERVE_OPERATOR_RESYNC_S", base.resync_s)),
            cluster_domain=env.get("CLIPSERVE_OPERATOR_CLUSTER_DOMAIN", base.cluster_domain),
        )
