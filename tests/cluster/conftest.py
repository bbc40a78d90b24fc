"""Fixtures for the control-plane harness tests."""

import time
from collections.abc import Iterator
from uuid import uuid4

import pytest

from tests.cluster.harness import Cluster, KubectlError


@pytest.fixture
def namespace(cluster: Cluster) -> Iterator[str]:
    """A fresh namespace per test (the cluster is shared by the session); deleted afterwards."""
    name = f"t-{uuid4().hex[:8]}"
    cluster.kubectl("create", "namespace", name)
    # Pods are refused until the serviceaccount controller has created the namespace's SA.
    deadline = time.monotonic() + 60
    while True:
        try:
            cluster.kubectl("get", "serviceaccount", "default", "-n", name)
            break
        except KubectlError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)
    yield name
    cluster.kubectl("delete", "namespace", name, "--wait=false")
