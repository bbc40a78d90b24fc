"""NetworkPolicies on the real node, where kube-router's firewall enforces them: first on probe
pods (enforcement itself), then the chart's own.

The chart scaling to zero (keda.enabled, minReplicas 0) puts the gate in front of the servers:
the gate's policy must admit the peers of `networkPolicy.from`, and the servers' policy those
peers and the gate (before 4fe6fdb it admitted only the peers: every gate-to-server connection
was refused). Two probe clients ask the same URLs side by side, one with the admitted label and
one without; the one without is refused while the other is answered, so the refusal is the
policy's doing, not a server that is not up.

KEDA's CRDs are installed (the chart renders a ScaledObject), not KEDA itself: nothing scales
the servers, so their Deployment (replicas left to the autoscaler) keeps one pod, and the test is
about the paths between pods. test_autoscaling.py covers the scaling through the gate.
"""

from __future__ import annotations

import json

from tests.realnode.conftest import CHART_MARKS, SMALL, A, helm_on, pinned_values
from tests.support.cluster import monitoring
from tests.support.cluster.harness import REPO, Cluster, KubectlError
from tests.support.cluster.realnode import PROBE_IMAGE, RealNode
from tests.support.polling import eventually
from tests.support.rendering import Helm

pytestmark = CHART_MARKS

# run_pod labels a pod app=<its name>: the policy admits the client named "admitted" only.
ADMITTED, OTHER = "admitted", "other"
ENCODE = json.dumps([{"text": "a photo of a cat"}])
# Bounds a hung system (kube-router syncs a policy within a second or two); asserts no timing.
SYNC_S = 120


def refused(node: RealNode, ns: str, pod: str, url: str) -> bool:
    """True when pod's connection to url is refused (kube-router REJECTs what no policy admits);
    False when an HTTP answer came back, whatever its status."""
    try:
        node.exec(ns, pod, "/probe", "get", url)
    except KubectlError as exc:
        if "connection refused" in str(exc.stderr):
            return True
        if not exc.stdout:  # neither refused nor answered: say what happened
            raise
    return False


def answer(node: RealNode, ns: str, pod: str, url: str, body: str = "") -> str:
    """The status line pod gets from url (POST body when given); the probe's error if none."""
    args = ("post", url, body) if body else ("get", url)
    try:
        out = node.exec(ns, pod, "/probe", *args)
    except KubectlError as exc:
        out = exc.stdout or f"no answer: {str(exc.stderr).strip()}"
    return out.partition("\n")[0]


def test_a_policy_refuses_the_pods_it_does_not_list_and_only_those(
    cluster: Cluster, real_node: RealNode, ns: str
) -> None:
    """Enforcement itself, on probe pods: open before the policy, refused by it after."""
    real_node.run_pod(ns, "web", PROBE_IMAGE, ["serve", ":8080"])
    for name in (ADMITTED, OTHER):
        real_node.client_pod(ns, name)
    pod = json.loads(cluster.kubectl("get", "pod", "web", "-n", ns, "-o", "json"))
    url = f"http://{pod['status']['podIP']}:8080/"
    assert not refused(real_node, ns, OTHER, url)  # no policy selects web yet
    policy = {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": "web", "namespace": ns},
        "spec": {
            "podSelector": {"matchLabels": {"app": "web"}},
            "policyTypes": ["Ingress"],
            "ingress": [{"from": [{"podSelector": {"matchLabels": {"app": ADMITTED}}}]}],
        },
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(policy))
    eventually(
        lambda: refused(real_node, ns, OTHER, url), "the policy to refuse the other pod", SYNC_S
    )
    assert answer(real_node, ns, ADMITTED, url).startswith("200 ")
    assert refused(real_node, ns, OTHER, url)


def test_the_gate_and_servers_admit_only_the_listed_peers_and_the_gate_reaches_the_servers(
    cluster: Cluster,
    real_node: RealNode,
    node_images: list[str],
    helm: Helm,
    ns: str,
) -> None:
    keda_objects = monitoring.keda_manifest(cluster, monitoring.build("keda"))
    crds = [o for o in keda_objects if o["kind"] == "CustomResourceDefinition"]
    monitoring.apply(cluster, crds)
    for crd in crds:
        cluster.kubectl("wait", f"crd/{crd['metadata']['name']}", "--for=condition=Established")
    values = {
        **pinned_values(),
        "model": A,
        "device": "cpu",
        "batching": {"computeWorkers": 1},
        "resources": SMALL,
        "keda": {"enabled": True, "minReplicas": 0, "maxReplicas": 1},
        "networkPolicy": {
            "enabled": True,
            "from": [{"podSelector": {"matchLabels": {"app": ADMITTED}}}],
        },
    }
    helm_on(
        cluster, helm, "install", "clip", str(REPO / "charts/clipserve"), "-n", ns,
        "--wait", "--timeout=600s", values=values,
    )  # fmt: skip
    # KEDA runs in this cluster once an autoscaling test has started it (a package fixture),
    # and it would take the idle servers to zero: a Service without endpoints neither admits
    # nor refuses anything (its packets go nowhere). Paused at one server; with no KEDA
    # running the annotation does nothing and the Deployment keeps its one replica.
    server_objects = ("-n", ns, "-l", "app.kubernetes.io/component=server")
    cluster.kubectl(
        "annotate", "scaledobject", *server_objects, "autoscaling.keda.sh/paused-replicas=1"
    )
    cluster.kubectl(
        "wait", "deployment", *server_objects, "--for=jsonpath={.status.readyReplicas}=1",
        "--timeout=600s", timeout=660,
    )  # fmt: skip
    for name in (ADMITTED, OTHER):
        real_node.client_pod(ns, name)
    server = f"http://clip-clipserve.{ns}.svc.cluster.local:3000"
    gate = f"http://clip-clipserve-gate.{ns}.svc.cluster.local:3000"

    # The policies take hold once kube-router has synced them with these pods' addresses.
    eventually(
        lambda: refused(real_node, ns, OTHER, f"{server}/readyz"),
        "the servers to refuse a client the policy does not list",
        SYNC_S,
    )
    # Through the gate to a server: only a server's answer names the model.
    through_gate = f"200 {A}"
    try:
        eventually(
            lambda: answer(real_node, ns, ADMITTED, f"{gate}/encode", ENCODE) == through_gate,
            "the listed client to be served through the gate (gate -> server admitted)",
            SYNC_S,
        )
    except AssertionError as exc:
        last = answer(real_node, ns, ADMITTED, f"{gate}/encode", ENCODE)
        raise AssertionError(f"{exc}; the gate answers: {last}") from exc
    eventually(
        lambda: refused(real_node, ns, OTHER, f"{gate}/readyz"),
        "the gate to refuse a client the policy does not list",
        SYNC_S,
    )

    # All at once, after the sync: each path as the policies say, the same URLs for both.
    assert answer(real_node, ns, ADMITTED, f"{gate}/encode", ENCODE) == through_gate
    assert answer(real_node, ns, ADMITTED, f"{server}/readyz").startswith("200 ")
    assert answer(real_node, ns, ADMITTED, f"{gate}/readyz").startswith("200 ")
    assert refused(real_node, ns, OTHER, f"{server}/readyz")
    assert refused(real_node, ns, OTHER, f"{gate}/readyz")
    assert refused(real_node, ns, OTHER, f"{gate}/encode")
