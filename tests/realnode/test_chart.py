"""`helm install charts/clipserve` on the real node serves in-cluster traffic, as a user runs it."""

from __future__ import annotations

import json

from tests.realnode.conftest import CHART_MARKS, SMALL, A, helm_on, pinned_values
from tests.support.cluster.harness import REPO, Cluster
from tests.support.cluster.realnode import RealNode
from tests.support.rendering import Helm

# The first test may wait for another session's real node to stop (one per machine), and for
# the images to be built and imported into the node (minutes).
pytestmark = CHART_MARKS


def test_helm_install_serves_from_its_service_by_dns(
    cluster: Cluster,
    real_node: RealNode,
    node_images: list[str],
    helm: Helm,
    ns: str,
    client: str,
) -> None:
    values = {
        **pinned_values(),
        "model": A,
        "device": "cpu",
        "batching": {"computeWorkers": 1},
        "resources": SMALL,
    }
    # No image override: the chart's default image, present in the node's runtime.
    helm_on(
        cluster, helm, "install", "clip", str(REPO / "charts/clipserve"), "-n", ns,
        "--wait", "--timeout=600s", values=values,
    )  # fmt: skip
    pod = json.loads(
        cluster.kubectl(
            "get", "pods", "-n", ns, "-l", "app.kubernetes.io/instance=clip", "-o", "json"
        )
    )["items"][0]
    assert pod["spec"]["nodeName"] == real_node.name
    assert pod["spec"]["containers"][0]["image"] == node_images[0]
    url = f"http://clip-clipserve.{ns}.svc.cluster.local:3000"
    status_line, body = real_node.exec(
        ns,
        client,
        "/probe",
        "post",
        f"{url}/v1/embeddings",
        json.dumps({"input": ["a dog", "a cat"]}),
    ).split("\n", 1)
    assert status_line == f"200 {A}"
    data = json.loads(body)["data"]
    assert [d["index"] for d in data] == [0, 1] and len(data[0]["embedding"]) == 512
    metrics = real_node.exec(ns, client, "/probe", "get", f"{url}/metrics")
    assert 'clipserve_requests_total{endpoint="/v1/embeddings",status="200"} 1.0' in metrics
