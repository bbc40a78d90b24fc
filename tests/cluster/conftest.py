"""Fixtures for the control-plane harness tests."""

from collections.abc import Iterator
from uuid import uuid4

import pytest

from tests.support.cluster.harness import Cluster


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    """A fresh namespace per test (the cluster is shared by the session); deleted afterwards."""
    name = cluster.create_namespace(f"t-{uuid4().hex[:8]}")
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false")
