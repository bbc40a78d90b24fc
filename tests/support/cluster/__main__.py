"""`python -m tests.support.cluster up|down`: a long-lived local cluster (kwok pools + a real
node, and with --metrics the autoscaling metrics pipeline)."""

from __future__ import annotations

import argparse
import os
import shutil
import sys
from pathlib import Path

from tests.support.cluster import node_join, pipeline, realnode
from tests.support.cluster.harness import Cluster, ClusterError, start
from tests.support.cluster.host import HostError
from tests.support.cluster.monitoring import MonitoringError
from tests.support.cluster.node_images import import_chart_images


def _default_state_dir() -> Path:
    if override := os.environ.get("CLIPSERVE_CLUSTER_STATE"):
        return Path(override)
    cache = Path(os.environ.get("CLIPSERVE_CACHE", Path.home() / ".cache/clipserve"))
    return cache / "cluster"


def _join_real_node(cluster: Cluster) -> realnode.RealNode:
    node = realnode.RealNode.load(cluster)
    if node and node.running():
        print(f"real node {node.name} already running; logs in {node.dirs.logs}")
        return node
    node = node_join.join(cluster, tie_to_parent=False)
    if node.lock_fd is not None:
        os.close(node.lock_fd)  # its forwarder keeps the machine lock while the node runs
    print(f"real node {node.name} joined ({node.ip}); logs in {node.dirs.logs}")
    # So that a ClipService or `helm install` without an image override runs there.
    print("building (cached) and importing the charts' images into the real node...", flush=True)
    for image in import_chart_images(node):
        print(f"  {image}")
    return node


def _start_metrics(cluster: Cluster, node: realnode.RealNode) -> str:
    """The metrics pipeline (Prometheus, prometheus-adapter, KEDA); Prometheus's URL."""
    print("building (cached) and starting the metrics pipeline...", flush=True)
    metrics = pipeline.up(cluster, node)
    print(
        f"prometheus at {metrics.url} (in the cluster: {pipeline.IN_CLUSTER_URL}); "
        f"prometheus-adapter and KEDA in namespaces monitoring and keda; logs in "
        f"{Path(metrics.proc.log).parent}"
    )
    return metrics.url


def up(state_dir: Path, real_node: bool, metrics: bool = False) -> int:
    """Start the cluster unless the one recorded in state_dir still runs (and with metrics,
    the metrics pipeline on its real node); print the environment to use it."""
    existing = Cluster.load(state_dir)
    if existing and existing.running():
        print(f"cluster already running ({existing.server}); logs in {state_dir / 'logs'}")
    else:
        if existing:
            # Leftovers of a half-dead cluster, by their recorded PIDs.
            pipeline.down(existing)
            existing.stop()
        shutil.rmtree(state_dir, ignore_errors=True)
        try:
            existing = start(state_dir, tie_to_parent=False)
        except ClusterError as err:
            print(err, file=sys.stderr)
            return 1
        print(f"cluster up at {existing.server}; logs in {state_dir / 'logs'}")
    env = f"KUBECONFIG={existing.kubeconfig} PATH={existing.bin_dir}:$PATH"
    if real_node:
        try:
            node = _join_real_node(existing)
            if metrics:
                env += f" PROMETHEUS={_start_metrics(existing, node)}"
        except (realnode.NodeError, HostError, MonitoringError) as err:
            print(err, file=sys.stderr)
            return 1
    print(f"export {env}")
    return 0


def down(state_dir: Path) -> int:
    """Stop Prometheus, the real node (restoring the machine; the metrics pods go with it),
    then the cluster, by their recorded PIDs."""
    existing = Cluster.load(state_dir)
    if existing is None:
        print(f"no cluster recorded in {state_dir}")
        return 0
    if pipeline.down(existing):
        print("prometheus stopped")
    node = realnode.RealNode.load(existing)
    if node is not None:
        node.stop()
        print("real node stopped; machine restored")
    existing.stop()
    print(f"cluster stopped; logs kept in {state_dir / 'logs'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    """Parse `up|down [--state-dir DIR] [--no-real-node] [--metrics]`."""
    parser = argparse.ArgumentParser(prog="python -m tests.support.cluster", description=__doc__)
    parser.add_argument("action", choices=["up", "down"])
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=_default_state_dir(),
        help="where its state and logs go (default: $CLIPSERVE_CLUSTER_STATE, else"
        " $CLIPSERVE_CACHE/cluster)",
    )
    parser.add_argument(
        "--no-real-node",
        action="store_true",
        help="only the control plane and the kwok pools (no root needed)",
    )
    parser.add_argument(
        "--metrics",
        action="store_true",
        help="also the autoscaling metrics pipeline: Prometheus, prometheus-adapter, KEDA"
        " (needs the real node)",
    )
    args = parser.parse_args(argv)
    if args.metrics and args.no_real_node:
        parser.error("--metrics needs the real node (prometheus-adapter and KEDA run there)")
    if args.action == "up":
        return up(args.state_dir, real_node=not args.no_real_node, metrics=args.metrics)
    return down(args.state_dir)


if __name__ == "__main__":
    sys.exit(main())
