"""Fixtures shared across test areas (each area adds its own in its folder's conftest.py)."""

from collections.abc import Iterator

import pytest

from tests.cluster.harness import Cluster, running_cluster


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One real control plane (2 GPU + 2 CPU kwok nodes) for the session; stopped at its end."""
    with running_cluster(tmp_path_factory.mktemp("cluster")) as running:
        yield running
