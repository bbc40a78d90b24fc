"""Fixtures for the chart tests: the pinned helm binary and the CRD validators."""

from __future__ import annotations

import pytest

from tests.chart.rendering import Helm, install_tool


@pytest.fixture(scope="session")
def helm() -> Helm:
    """helm from scripts/install-helm.sh (cached after the first run)."""
    return Helm(install_tool("install-helm.sh"))


@pytest.fixture(scope="session")
def crd_validator() -> str:
    """validate.mjs from scripts/install-crd-validators.sh (ServiceMonitor, ScaledObject)."""
    return install_tool("install-crd-validators.sh")
