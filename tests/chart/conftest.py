"""Fixtures for the chart tests: the CRD validators and a namespace (helm: tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator
from uuid import uuid4

import pytest

from tests.support.cluster.harness import Cluster
from tests.support.rendering import install_tool


@pytest.fixture(scope="session")
def crd_validator() -> str:
    """validate.mjs from scripts/install-crd-validators.sh (ServiceMonitor, ScaledObject)."""
    return install_tool("install-crd-validators.sh")


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    """A fresh namespace on the shared cluster; deleted (and its GPUs freed) afterwards."""
    name = cluster.create_namespace(f"chart-{uuid4().hex[:8]}")
    yield name
    # Wait, so the next test (of any area) finds the GPU pool's capacity free again.
    cluster.kubectl("delete", "namespace", name, "--wait=true", "--timeout=120s", timeout=150)
