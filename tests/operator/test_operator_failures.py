"""Every failure reaches the ClipService, on the real control plane, and clears when fixed.

Each kind a user can meet (helm missing, a chart that fails to render, an RBAC denial) shows as
Degraded=True with its reason and message, a Warning event and the operator's error metric; then
the cause is fixed and the ClipService becomes Ready with Degraded=False. The command's own
start-up checks and its namespaced mode run here too, as real processes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml
from clipserve.bench.server import free_port

from tests.support.clipservices import (
    clip,
    condition,
    degraded,
    get,
    recovered,
    warnings,
)
from tests.support.cluster.harness import Cluster
from tests.support.running import (
    OPERATOR_NS,
    RELEASE,
    REPO,
    OperatorRun,
    http_get,
    token_kubeconfig,
    wait_for,
)

pytestmark = [pytest.mark.cluster, pytest.mark.helm, pytest.mark.slow]

CPU_POOL = {"clipserve.io/node-pool": "cpu"}
A = "ViT-B-32:random"
ERRORS = "clipserve_operator_reconcile_errors_total"
COMMAND = str(Path(sys.executable).parent / "clipserve-operator")


def test_missing_helm_is_degraded_with_the_path_and_clears_when_helm_is_back(
    cluster: Cluster, running_operator: OperatorRun, ns: str
) -> None:
    helm = Path(running_operator.env["CLIPSERVE_OPERATOR_HELM"])
    target = helm.readlink()
    before = running_operator.metric(ERRORS, 'kind="permanent",reason="HelmNotFound"')
    helm.unlink()
    try:
        clip(
            cluster,
            ns,
            "nohelm",
            {"model": A, "replicas": 1, "nodePool": {"nodeSelector": CPU_POOL}},
        )
        cond = wait_for("HelmNotFound", lambda: degraded(cluster, ns, "nohelm", "HelmNotFound"))
        assert str(helm) in cond["message"] and "No such file" in cond["message"]
        assert condition(get(cluster, "clip", "nohelm", ns), "Ready")["status"] == "False"
        wait_for("a Warning event", lambda: warnings(cluster, ns, "nohelm", "HelmNotFound"))
        assert running_operator.metric(ERRORS, 'kind="permanent",reason="HelmNotFound"') > before
    finally:
        helm.symlink_to(target)
    # Nothing about the ClipService changes: the operator retries a cause outside it by itself.
    wait_for("recovery once helm is back", lambda: recovered(cluster, ns, "nohelm"))


def bad_values(
    cluster: Cluster, ns: str, name: str, values: dict[str, Any], reason: str
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """A ClipService whose spec.values fail with `reason`: its Degraded condition and Warning
    events, once both show."""
    spec = {"model": A, "replicas": 1, "nodePool": {"nodeSelector": CPU_POOL}, "values": values}
    clip(cluster, ns, name, spec)
    cond = wait_for(reason, lambda: degraded(cluster, ns, name, reason))
    return cond, wait_for("a Warning event", lambda: warnings(cluster, ns, name, reason))


def values_removed(cluster: Cluster, ns: str, name: str) -> None:
    """Fix the spec by dropping spec.values; returns once the ClipService has recovered."""
    cluster.kubectl(
        "patch", "clip", name, "-n", ns, "--type", "json",
        "-p", '[{"op": "remove", "path": "/spec/values"}]',
    )  # fmt: skip
    wait_for("recovery after the fix", lambda: recovered(cluster, ns, name))


def test_a_chart_that_fails_to_render_shows_helms_error_and_clears_when_the_spec_is_fixed(
    cluster: Cluster, running_operator: OperatorRun, ns: str
) -> None:
    before = running_operator.metric(ERRORS, 'kind="permanent",reason="RenderFailed"')
    # The chart's values.schema.json wants an integer.
    cond, warned = bad_values(cluster, ns, "render", {"replicaCount": "many"}, "RenderFailed")
    assert cond["message"].startswith("helm template failed:")
    assert "replicaCount" in cond["message"] and "replicaCount" in warned[0]["message"]
    assert running_operator.metric(ERRORS, 'kind="permanent",reason="RenderFailed"') > before
    assert get(cluster, "deployment", "render-blue", ns) is None  # nothing half-applied
    values_removed(cluster, ns, "render")


def test_an_object_the_api_server_refuses_shows_its_message_and_clears_when_fixed(
    cluster: Cluster, running_operator: OperatorRun, ns: str
) -> None:
    # helm renders a node label key the API server refuses.
    labels = {"nodeSelector": {"not a label": "x"}}
    cond, _ = bad_values(cluster, ns, "refused", labels, "ApplyRefused")
    assert "422" in cond["message"] and "Invalid value" in cond["message"]
    assert "not a label" in cond["message"]
    values_removed(cluster, ns, "refused")


def test_values_outside_the_allow_list_are_refused_by_name_and_nothing_is_applied(
    cluster: Cluster, running_operator: OperatorRun, ns: str
) -> None:
    # The node's root filesystem mounted into the server: what anyone who may create a
    # ClipService could have the operator write for them, with its rights, before the allow-list.
    host = {
        "extraVolumes": [{"name": "host", "hostPath": {"path": "/"}}],
        "extraVolumeMounts": [{"name": "host", "mountPath": "/host"}],
    }
    cond, warned = bad_values(cluster, ns, "mount", host, "ValuesNotAllowed")
    named = "spec.values.extraVolumeMounts, spec.values.extraVolumes: not allowed"
    assert cond["message"].startswith(named) and warned[0]["message"].startswith(named)
    deployments = json.loads(cluster.kubectl("get", "deployments", "-n", ns, "-o", "json"))
    assert deployments["items"] == []  # nothing rendered: no pod with the host's root
    values_removed(cluster, ns, "mount")
    volumes = get(cluster, "deployment", "mount-blue", ns)["spec"]["template"]["spec"]["volumes"]
    assert not any("hostPath" in v for v in volumes)


@contextmanager
def rule_removed(cluster: Cluster, resource: str) -> Iterator[None]:
    """The operator's ClusterRole without the rule for `resource`, put back afterwards."""
    role = json.loads(cluster.kubectl("get", "clusterrole", RELEASE, "-o", "json"))
    rules = role["rules"]
    role["rules"] = [r for r in rules if resource not in r["resources"]]
    assert len(role["rules"]) == len(rules) - 1
    cluster.kubectl("replace", "-f", "-", input=json.dumps(role))
    try:
        yield
    finally:
        current = json.loads(cluster.kubectl("get", "clusterrole", RELEASE, "-o", "json"))
        current["rules"] = rules
        cluster.kubectl("replace", "-f", "-", input=json.dumps(current))


def test_an_rbac_denial_names_verb_and_resource_and_clears_when_granted(
    cluster: Cluster, running_operator: OperatorRun, ns: str
) -> None:
    before = running_operator.metric(ERRORS, 'kind="permanent",reason="Forbidden"')
    with rule_removed(cluster, "poddisruptionbudgets"):
        # Two replicas: the chart renders a PodDisruptionBudget, which the operator may not write.
        clip(
            cluster, ns, "rbac", {"model": A, "replicas": 2, "nodePool": {"nodeSelector": CPU_POOL}}
        )
        cond = wait_for("Forbidden", lambda: degraded(cluster, ns, "rbac", "Forbidden"))
        # The first call for it: whether one of that name is there already, and whose.
        assert cond["message"].startswith(
            f"forbidden: the operator may not get poddisruptionbudgets.policy in namespace {ns}"
        )
        assert f"system:serviceaccount:{OPERATOR_NS}:{RELEASE}" in cond["message"]
        wait_for("a Warning event", lambda: warnings(cluster, ns, "rbac", "Forbidden"))
        assert running_operator.metric(ERRORS, 'kind="permanent",reason="Forbidden"') > before
        # What it may write is still written: the pods run, only the budget is missing.
        wait_for(
            "the Deployment despite the denial", lambda: get(cluster, "deployment", "rbac-blue", ns)
        )
    obj = wait_for("recovery once granted", lambda: recovered(cluster, ns, "rbac"))
    assert obj["status"]["readyReplicas"] == 2
    assert get(cluster, "poddisruptionbudget", "rbac-blue", ns) is not None


# The Prometheus Operator's ServiceMonitor kind, its schema left open: what the operator needs
# from the cluster is that the kind is served, not the Prometheus Operator itself.
SERVICEMONITOR_CRD = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": "servicemonitors.monitoring.coreos.com"},
    "spec": {
        "group": "monitoring.coreos.com",
        "scope": "Namespaced",
        "names": {
            "kind": "ServiceMonitor",
            "plural": "servicemonitors",
            "singular": "servicemonitor",
        },
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "x-kubernetes-preserve-unknown-fields": True,
                    }
                },
            }
        ],
    },
}


def test_a_kind_installed_after_the_operator_started_clears_the_degraded_it_caused(
    cluster: Cluster, running_operator: OperatorRun, ns: str
) -> None:
    """A user installs the Prometheus Operator (or KEDA) after clipserve's operator: the
    ClipService that asked for its kind recovers by itself, with no restart and no spec change."""
    spec = {
        "model": A,
        "replicas": 1,
        "nodePool": {"nodeSelector": CPU_POOL},
        "monitoring": {"serviceMonitor": True},
    }
    clip(cluster, ns, "late", spec)
    cond = wait_for(
        "Degraded: no ServiceMonitor kind", lambda: degraded(cluster, ns, "late", "ReconcileFailed")
    )
    assert "monitoring.coreos.com/v1 ServiceMonitor" in cond["message"]
    cluster.kubectl("apply", "-f", "-", input=json.dumps(SERVICEMONITOR_CRD))
    try:
        crd = f"crd/{SERVICEMONITOR_CRD['metadata']['name']}"
        cluster.kubectl("wait", crd, "--for=condition=Established")
        wait_for("recovery once the kind is served", lambda: recovered(cluster, ns, "late"))
        monitors = json.loads(cluster.kubectl("get", "servicemonitors", "-n", ns, "-o", "json"))
        assert [m["metadata"]["name"] for m in monitors["items"]] == ["late"]
    finally:
        cluster.kubectl("delete", "clip", "late", "-n", ns, "--wait=true")
        cluster.kubectl("delete", "-f", "-", "--wait=true", input=json.dumps(SERVICEMONITOR_CRD))


def _command(env: dict[str, str], *argv: str, log: Path) -> subprocess.Popen[bytes]:
    """`clipserve-operator` as a real process, its output in `log`."""
    with log.open("ab") as out:
        return subprocess.Popen(
            [COMMAND, *argv], env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT
        )


def test_start_up_refuses_a_crd_of_another_revision(
    cluster: Cluster, running_operator: OperatorRun, tmp_path: Path
) -> None:
    crd = "crd/clipservices.clipserve.io"
    key = "clipserve.io/crd-revision"
    revision = json.loads(cluster.kubectl("get", crd, "-o", "json"))["metadata"]["annotations"][key]
    cluster.kubectl("annotate", crd, f"{key}=0", "--overwrite")
    try:
        env = {**running_operator.env, "CLIPSERVE_OPERATOR_METRICS_PORT": "0"}
        proc = _command(env, log=tmp_path / "log")
        assert proc.wait(timeout=120) == 1
    finally:
        cluster.kubectl("annotate", crd, f"{key}={revision}", "--overwrite")
    out = (tmp_path / "log").read_text().strip().splitlines()
    assert out == [
        f"clipserve-operator: the installed CRD clipservices.clipserve.io is revision 0, this "
        f"operator needs revision {revision}: kubectl apply -f manifests/crd/ (helm "
        "install/upgrade never updates a CRD)"
    ]


def test_namespaced_operator_watches_only_its_namespaces_with_rbac_bound_only_there(
    cluster: Cluster, operator: OperatorRun, helm_bin: str, tmp_path: Path
) -> None:
    watched, other = "op-watched", "op-unwatched"
    for name in (watched, other):
        cluster.create_namespace(name)
    # The operator chart's own RBAC for watchNamespaces, under another name and ServiceAccount.
    rendered = subprocess.run(
        [
            helm_bin, "template", "nsop", str(REPO / "charts/clipserve-operator"),
            "-n", OPERATOR_NS, "--set", f"watchNamespaces={{{watched}}}",
        ],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    rbac = ("ServiceAccount", "ClusterRole", "ClusterRoleBinding", "RoleBinding")
    docs = [d for d in yaml.safe_load_all(rendered) if d and d["kind"] in rbac]
    assert not any(
        d["kind"] == "ClusterRoleBinding" and d["roleRef"]["name"] == "nsop-clipserve-operator"
        for d in docs
    )
    cluster.kubectl("apply", "-f", "-", input="\n---\n".join(json.dumps(d) for d in docs))
    token = cluster.kubectl("create", "token", "nsop-clipserve-operator", "-n", OPERATOR_NS).strip()
    operator.stop()  # one operator at a time
    liveness = free_port()
    env = {
        **operator.env,
        "KUBECONFIG": token_kubeconfig(cluster, token, tmp_path / "kubeconfig"),
        "CLIPSERVE_OPERATOR_METRICS_PORT": "0",
        "CLIPSERVE_OPERATOR_LIVENESS": f"http://127.0.0.1:{liveness}/healthz",
    }
    log = tmp_path / "log"
    proc = _command(env, "--namespace", watched, log=log)
    try:
        wait_for(
            "the namespaced operator to be live",
            lambda: (
                http_get(f"http://127.0.0.1:{liveness}/healthz")[0] == 200
                or proc.poll() is not None
            ),
        )
        assert proc.poll() is None, log.read_text()[-3000:]
        spec = {"model": A, "replicas": 1, "nodePool": {"nodeSelector": CPU_POOL}}
        clip(cluster, other, "ignored", spec)
        clip(cluster, watched, "served", spec)
        wait_for("the watched ClipService Ready", lambda: recovered(cluster, watched, "served"))
        assert not (get(cluster, "clip", "ignored", other) or {}).get("status")
        assert get(cluster, "deployment", "ignored-blue", other) is None
    finally:
        proc.terminate()
        assert proc.wait(timeout=60) == 0, log.read_text()[-3000:]
        for name in (watched, other):
            cluster.kubectl("delete", "namespace", name, "--wait=false")
    text = log.read_text()
    assert "403" not in text and "orbidden" not in text, text[-3000:]
