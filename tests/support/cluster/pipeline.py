"""The metrics pipeline of a long-lived local cluster (`make cluster METRICS=1`): the same parts
the autoscaling tests start (monitoring.py), but outliving the command that started them and
recorded in the cluster's state dir, so `make cluster-down` stops them.

Prometheus is a host process (recorded here, stopped by PID, before the node whose bridge
address it listens on); prometheus-adapter and KEDA are pods on the real node, so they go with
its pods, and their cluster-wide objects go with the control plane's etcd.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from tests.support.cluster import monitoring
from tests.support.cluster.harness import Cluster
from tests.support.cluster.processes import Proc, is_running, stop
from tests.support.cluster.realnode import RealNode

STATE_FILE = "metrics.json"
IN_CLUSTER_URL = f"http://{monitoring.PROMETHEUS_SERVICE}.{monitoring.NAMESPACE}.svc:{monitoring.PROMETHEUS_PORT}"


@dataclass
class Pipeline:
    """A recorded pipeline: where Prometheus answers from this machine, and its process."""

    url: str
    proc: Proc

    @classmethod
    def load(cls, cluster: Cluster) -> Pipeline | None:
        """The pipeline recorded for cluster, or None."""
        try:
            data = json.loads((cluster.state_dir / STATE_FILE).read_text())
        except FileNotFoundError:
            return None
        return cls(data["url"], Proc(**data["proc"]))

    def save(self, cluster: Cluster) -> None:
        """Record it beside the cluster's state, for `down`."""
        data = {"url": self.url, "proc": self.proc.__dict__}
        (cluster.state_dir / STATE_FILE).write_text(json.dumps(data, indent=2))

    def running(self) -> bool:
        """True while Prometheus runs."""
        return is_running(self.proc)


def up(cluster: Cluster, node: RealNode) -> Pipeline:
    """Start Prometheus and install prometheus-adapter and KEDA, unless already running;
    idempotent (the adapter and KEDA are applied again, server-side, at no cost)."""
    pipeline = Pipeline.load(cluster)
    if pipeline is None or not pipeline.running():
        binary = monitoring.build("prometheus") / "prometheus"
        prom = monitoring.start_prometheus(
            cluster, binary, cluster.state_dir / "prometheus", tie_to_parent=False
        )
        pipeline = Pipeline(prom.url, prom.proc)
        pipeline.save(cluster)
    monitoring.install_prometheus_adapter(cluster, node, monitoring.build("prometheus-adapter"))
    monitoring.install_keda(cluster, node, monitoring.build("keda"))
    return pipeline


def down(cluster: Cluster) -> bool:
    """Stop the recorded Prometheus (its data goes with it); whether there was one."""
    pipeline = Pipeline.load(cluster)
    if pipeline is None:
        return False
    stop([pipeline.proc])
    (cluster.state_dir / STATE_FILE).unlink(missing_ok=True)
    return True
