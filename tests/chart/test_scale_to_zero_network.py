"""Scale to zero behind an Ingress and a NetworkPolicy (issue 25 item 11), the gate's API keys,
and the operator's prefetch Job pods under the servers' egress rules (item 9)."""

from __future__ import annotations

import re
from typing import Any

import pytest
import yaml
from clipserve.metrics import GATE_OUTCOMES, GATE_WAKING
from clipserve_operator.render import chart_values, helm_template
from clipserve_operator.weights import prefetch_job

from tests.chart.test_model_weights import prefetch_manifest
from tests.support.rendering import CHART, Helm, Obj, only

pytestmark = pytest.mark.helm

GATED = CHART / "ci" / "scale-to-zero-network-values.yaml"
POLICY = yaml.safe_load(GATED.read_text())["networkPolicy"]


def _named(objs: list[Obj], kind: str) -> dict[str, Obj]:
    return {o["metadata"]["name"]: o for o in objs if o["kind"] == kind}


def _selects(selector: dict[str, Any], labels: dict[str, str]) -> bool:
    """Whether a matchLabels selector (a Service's, or a policy's podSelector) picks `labels`."""
    return selector.items() <= labels.items()


def _pod_labels(obj: Obj) -> dict[str, str]:
    return obj["spec"]["template"]["metadata"]["labels"]


def _peers(policy: Obj) -> list[Obj]:
    (rule,) = policy["spec"]["ingress"]
    return rule["from"]


def test_should_route_the_ingress_to_the_gate_if_keda_may_scale_to_zero(helm: Helm) -> None:
    objs = helm.template(values_files=[GATED])
    services = _named(objs, "Service")
    (rule,) = only(objs, "Ingress")["spec"]["rules"]
    backend = rule["http"]["paths"][0]["backend"]["service"]
    assert backend == {"name": "clip-clipserve-gate", "port": {"name": "http"}}
    gate = _named(objs, "Deployment")["clip-clipserve-gate"]
    assert _selects(services[backend["name"]]["spec"]["selector"], _pod_labels(gate))
    # Servers that keep a pod: no gate, the Ingress goes to them.
    kept = helm.template(values_files=[GATED], values={"keda": {"minReplicas": 1}})
    backend = only(kept, "Ingress")["spec"]["rules"][0]["http"]["paths"][0]["backend"]
    assert backend["service"]["name"] == "clip-clipserve" and "clip-clipserve-gate" not in str(kept)


def test_should_admit_the_servers_peers_to_the_gate_and_the_gate_to_the_servers(
    helm: Helm,
) -> None:
    objs = helm.template(values_files=[GATED])
    policies = _named(objs, "NetworkPolicy")
    deployments = _named(objs, "Deployment")
    gate_pods = _pod_labels(deployments["clip-clipserve-gate"])
    server_pods = _pod_labels(deployments["clip-clipserve"])
    server = policies["clip-clipserve"]["spec"]
    gate = policies["clip-clipserve-gate"]["spec"]
    # Each policy covers its own pods only.
    assert _selects(gate["podSelector"]["matchLabels"], gate_pods)
    assert not _selects(gate["podSelector"]["matchLabels"], server_pods)
    assert _selects(server["podSelector"]["matchLabels"], server_pods)
    assert not _selects(server["podSelector"]["matchLabels"], gate_pods)
    # The gate: port http from exactly the servers' listed peers.
    peers = POLICY["from"]
    assert gate["policyTypes"] == ["Ingress"]
    assert gate["ingress"] == [{"ports": [{"port": "http", "protocol": "TCP"}], "from": peers}]
    # The servers: the same peers, and the gate's pods.
    assert _peers(policies["clip-clipserve"])[: len(peers)] == peers
    (extra,) = _peers(policies["clip-clipserve"])[len(peers) :]
    assert set(extra) == {"podSelector"}
    assert _selects(extra["podSelector"]["matchLabels"], gate_pods)
    # Without `from` every source may reach both; nothing is added.
    open_objs = helm.template(values_files=[GATED], values={"networkPolicy": {"from": []}})
    for policy in _named(open_objs, "NetworkPolicy").values():
        assert all("from" not in r for r in policy["spec"]["ingress"])
    # Servers that keep a pod: no gate, no gate policy, no gate peer.
    kept = helm.template(values_files=[GATED], values={"keda": {"minReplicas": 1}})
    assert set(_named(kept, "NetworkPolicy")) == {"clip-clipserve"}
    assert _peers(_named(kept, "NetworkPolicy")["clip-clipserve"]) == peers


def test_should_give_the_gate_the_servers_api_keys_if_they_are_set(helm: Helm) -> None:
    objs = helm.template(values_files=[GATED])
    deployments = _named(objs, "Deployment")
    server = deployments["clip-clipserve"]["spec"]["template"]["spec"]
    gate = deployments["clip-clipserve-gate"]["spec"]["template"]["spec"]
    (container,) = gate["containers"]
    env = {e["name"]: e["value"] for e in container["env"]}
    assert env["CLIPSERVE_API_KEY_FILE"] == "/etc/clipserve/api-keys/api-keys"
    server_env = {e["name"]: e.get("value") for e in server["containers"][0]["env"]}
    assert server_env["CLIPSERVE_API_KEY_FILE"] == env["CLIPSERVE_API_KEY_FILE"]
    mount = next(m for m in container["volumeMounts"] if m["name"] == "api-keys")
    assert (mount["mountPath"], mount["readOnly"]) == ("/etc/clipserve/api-keys", True)
    volumes = {v["name"]: v for v in gate["volumes"]}
    assert volumes["api-keys"] == {v["name"]: v for v in server["volumes"]}["api-keys"]
    # No keys: none mounted, the gate lets every request through (as the servers do).
    bare = _named(helm.template({"keda": {"enabled": True, "minReplicas": 0}}), "Deployment")
    (container,) = bare["clip-clipserve-gate"]["spec"]["template"]["spec"]["containers"]
    assert "env" not in container and "api-keys" not in str(container)


def test_should_wake_on_authorized_requests_only(helm: Helm) -> None:
    wake = only(helm.template(values_files=[GATED]), "ScaledObject")["spec"]["triggers"][1]
    outcomes = re.search(r'outcome=~"([^"]*)"', wake["metadata"]["query"])
    assert outcomes, wake["metadata"]["query"]
    # Exactly the gate's waking outcomes (clipserve.metrics): never a 401 or a keyless page.
    assert outcomes.group(1).split("|") == list(GATE_WAKING)
    assert {"unauthorized", "page"} == set(GATE_OUTCOMES) - set(GATE_WAKING)


def test_should_hold_the_prefetch_jobs_pods_to_the_servers_egress_rules(helm: Helm) -> None:
    # As the operator does: the chart rendered for a ClipService with a shared weights cache,
    # and the prefetch Job built from its Deployment (operator/clipserve_operator/weights.py).
    values = chart_values(
        "search",
        {
            "model": "ViT-B-32:openai",
            "modelCache": {"type": "shared"},
            "values": {"networkPolicy": {"enabled": True, "egress": POLICY["egress"]}},
        },
        model="ViT-B-32:openai",
        slot="blue",
        service_slot="blue",
    )
    objs = helm_template(helm.binary, str(CHART), "search", "ml", values)
    job = prefetch_job("search", only(objs, "Deployment"))
    job_pods = job["spec"]["template"]["metadata"]["labels"]
    policies = _named(objs, "NetworkPolicy")
    weights = policies["search-weights"]["spec"]
    assert _selects(weights["podSelector"]["matchLabels"], job_pods)
    assert weights["policyTypes"] == ["Ingress", "Egress"] and weights["ingress"] == []
    assert weights["egress"] == policies["search"]["spec"]["egress"]
    assert weights["egress"][1:] == POLICY["egress"]  # after DNS
    # Its pods stay out of the servers' Service and policy.
    service = only(objs, "Service")
    assert not _selects(service["spec"]["selector"], job_pods)
    assert not _selects(policies["search"]["spec"]["podSelector"]["matchLabels"], job_pods)


def test_should_hold_the_readme_prefetch_jobs_pods_to_the_servers_egress_rules(
    helm: Helm,
) -> None:
    claim, job = prefetch_manifest()
    cache = {"type": "existingClaim", "existingClaim": claim["metadata"]["name"], "readOnly": True}
    objs = helm.template({"modelCache": cache, "networkPolicy": POLICY})
    policies = _named(objs, "NetworkPolicy")
    weights = policies["clip-clipserve-weights"]["spec"]
    assert _selects(
        weights["podSelector"]["matchLabels"], job["spec"]["template"]["metadata"]["labels"]
    )
    assert weights["egress"] == policies["clip-clipserve"]["spec"]["egress"]
    # A cache the pods fill themselves needs no Job: no policy for one.
    writable = helm.template({"modelCache": {**cache, "readOnly": False}, "networkPolicy": POLICY})
    assert set(_named(writable, "NetworkPolicy")) == {"clip-clipserve"}
