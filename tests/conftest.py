"""Fixtures shared across test areas (each area adds its own in its folder's conftest.py)."""

from collections.abc import Iterator

import pytest

from tests.cluster.harness import Cluster, running_cluster


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One real control plane (2 GPU + 2 CPU kwok nodes) for the session; stopped at its end."""
    with running_cluster(tmp_path_factory.mktemp("cluster")) as running:
        yield running


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport:
    """On a failing test that used the cluster, point at the control-plane logs."""
    report: pytest.TestReport = yield
    running = getattr(item, "funcargs", {}).get("cluster")
    if report.failed and isinstance(running, Cluster):
        report.sections.append(("cluster", f"control-plane logs: {running.state_dir / 'logs'}"))
    return report
