"""The operator's settings: defaults, CLIPSERVE_OPERATOR_* variables."""

from __future__ import annotations

from clipserve_operator.settings import Settings


def test_settings_come_from_the_environment() -> None:
    settings = Settings.from_env(
        {
            "CLIPSERVE_OPERATOR_HELM": "/opt/helm",
            "CLIPSERVE_OPERATOR_METRICS_PORT": "0",
            "CLIPSERVE_OPERATOR_RESYNC_S": "30",
        }
    )
    assert (settings.helm, settings.metrics_port, settings.resync_s) == ("/opt/helm", 0, 30.0)
    assert Settings.from_env({}).chart.endswith("charts/clipserve")
