"""Fixtures shared across test areas (each area adds its own in its folder's conftest.py)."""

from collections.abc import Iterator

import pytest

from tests.support.cluster import realnode
from tests.support.cluster.harness import Cluster, running_cluster
from tests.support.rendering import Helm, install_tool


@pytest.fixture(scope="session")
def helm() -> Helm:
    """The pinned helm from scripts/install-helm.sh (cached after the first run)."""
    return Helm(install_tool("install-helm.sh"))


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One real control plane (2 GPU + 2 CPU kwok nodes) for the session; stopped at its end."""
    with running_cluster(tmp_path_factory.mktemp("cluster")) as running:
        yield running


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport:
    """On a failing test that used the cluster, point at the control-plane logs."""
    report: pytest.TestReport = yield
    args = getattr(item, "funcargs", {})
    running, node = args.get("cluster"), args.get("real_node")
    if report.failed and isinstance(running, Cluster):
        report.sections.append(("cluster", f"control-plane logs: {running.state_dir / 'logs'}"))
    if report.failed and isinstance(node, realnode.RealNode):
        report.sections.append(("real node", f"real node logs: {node.dirs.logs}"))
    return report
