"""The operator writes only its own objects, on the real control plane (pods simulated by kwok).

An object of a name a ClipService would write that is already there and not the ClipService's
(no ownerReference to it) is left exactly as it is, is not deleted with the ClipService, and
the ClipService says so: Degraded=True/NotOwned naming it.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.support.clipservices import clip, degraded, get, recovered, warnings
from tests.support.cluster.harness import Cluster
from tests.support.running import OperatorRun, wait_for

pytestmark = [pytest.mark.cluster, pytest.mark.helm, pytest.mark.slow]

CPU_POOL = {"clipserve.io/node-pool": "cpu"}
A = "ViT-B-32:random"


def _spec(**extra: Any) -> dict[str, Any]:
    return {"model": A, "replicas": 1, "nodePool": {"nodeSelector": CPU_POOL}, **extra}


def _owners(obj: dict[str, Any] | None) -> list[str]:
    assert obj is not None
    return [ref["uid"] for ref in obj["metadata"].get("ownerReferences") or []]


def _create(cluster: Cluster, ns: str, obj: dict[str, Any]) -> None:
    cluster.kubectl("create", "-n", ns, "-f", "-", input=json.dumps(obj))


def test_objects_already_there_are_not_taken_over_nor_deleted_with_the_clipservice(
    cluster: Cluster, running_operator: OperatorRun, ns: str
) -> None:
    # Someone's Service `web`, and a claim holding someone's data under the name the shared
    # weights cache would get: the same spec the operator would write, so applying would adopt it.
    cluster.kubectl("create", "service", "clusterip", "web", "--tcp=80:8080", "-n", ns)
    claim = {
        "apiVersion": "v1",
        "kind": "PersistentVolumeClaim",
        "metadata": {"name": "web-weights", "labels": {"team": "theirs"}},
        "spec": {"accessModes": ["ReadWriteMany"], "resources": {"requests": {"storage": "10Gi"}}},
    }
    _create(cluster, ns, claim)
    service = get(cluster, "service", "web", ns)
    assert service is not None
    clip(cluster, ns, "web", _spec(modelCache={"type": "shared"}))
    cond = wait_for("NotOwned", lambda: degraded(cluster, ns, "web", "NotOwned"))
    assert cond["message"].startswith(
        "Service web, PersistentVolumeClaim web-weights: already there and not this ClipService's"
    )
    wait_for("a Warning event", lambda: warnings(cluster, ns, "web", "NotOwned"))
    after = get(cluster, "service", "web", ns)
    assert after is not None and _owners(after) == []
    assert after["metadata"]["resourceVersion"] == service["metadata"]["resourceVersion"]
    kept = get(cluster, "pvc", "web-weights", ns)
    assert (
        _owners(kept) == []
        and kept is not None
        and kept["metadata"]["labels"] == {"team": "theirs"}
    )
    # Nothing else is applied either: a prefetch Job or pods would use that claim's data.
    assert (
        json.loads(cluster.kubectl("get", "jobs,deployments", "-n", ns, "-o", "json"))["items"]
        == []
    )
    # Delete the ClipService; a ConfigMap it owns tells when the garbage collector has acted.
    uid = get(cluster, "clip", "web", ns)["metadata"]["uid"]  # type: ignore[index]
    ref = {"apiVersion": "clipserve.io/v1alpha1", "kind": "ClipService", "name": "web", "uid": uid}
    marker = {"apiVersion": "v1", "kind": "ConfigMap"}
    _create(cluster, ns, {**marker, "metadata": {"name": "gc-marker", "ownerReferences": [ref]}})
    cluster.kubectl("delete", "clip", "web", "-n", ns)
    wait_for("the garbage collector", lambda: get(cluster, "configmap", "gc-marker", ns) is None)
    assert get(cluster, "service", "web", ns) is not None
    assert get(cluster, "pvc", "web-weights", ns) is not None


def test_once_the_object_in_the_way_is_gone_the_clipservice_recovers_by_itself(
    cluster: Cluster, running_operator: OperatorRun, ns: str
) -> None:
    cluster.kubectl("create", "service", "clusterip", "api", "--tcp=80:8080", "-n", ns)
    clip(cluster, ns, "api", _spec())
    cond = wait_for("NotOwned", lambda: degraded(cluster, ns, "api", "NotOwned"))
    assert cond["message"].startswith("Service api: already there")
    assert get(cluster, "deployment", "api-blue", ns) is None
    cluster.kubectl("delete", "service", "api", "-n", ns)
    # No change of the ClipService: the operator retries a cause outside it by itself.
    owner = wait_for("recovery", lambda: recovered(cluster, ns, "api"))
    assert _owners(get(cluster, "service", "api", ns)) == [owner["metadata"]["uid"]]


def test_an_object_replaced_by_someone_else_since_it_was_applied_is_not_taken_over(
    cluster: Cluster, running_operator: OperatorRun, ns: str
) -> None:
    # Two replicas: the chart renders a PodDisruptionBudget (a kind the operator does not watch).
    clip(cluster, ns, "kept", _spec(replicas=2))
    owner = wait_for("Ready", lambda: recovered(cluster, ns, "kept"))
    assert _owners(get(cluster, "pdb", "kept-blue", ns)) == [owner["metadata"]["uid"]]
    theirs = {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {"name": "kept-blue", "namespace": ns, "labels": {"team": "theirs"}},
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": {"app": "theirs"}}},
    }
    # Deleted and created again by someone else, between two reconciles.
    cluster.kubectl("replace", "--force", "-f", "-", input=json.dumps(theirs))
    cluster.kubectl("annotate", "clip", "kept", "-n", ns, "example.com/poke=1")
    cond = wait_for("NotOwned", lambda: degraded(cluster, ns, "kept", "NotOwned"))
    assert cond["message"].startswith("PodDisruptionBudget kept-blue: already there")
    pdb = get(cluster, "pdb", "kept-blue", ns)
    assert (
        _owners(pdb) == [] and pdb is not None and pdb["metadata"]["labels"] == {"team": "theirs"}
    )
    assert pdb["spec"]["selector"] == {"matchLabels": {"app": "theirs"}}
