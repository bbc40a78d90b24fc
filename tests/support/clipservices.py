"""Reading and writing ClipServices and their children with kubectl, for the cluster tests."""

from __future__ import annotations

import calendar
import json
import time
from typing import Any

from tests.support.cluster.harness import Cluster, KubectlError


def epoch_seconds(stamp: str) -> int:
    """Seconds since the epoch of a Kubernetes timestamp (whole seconds, UTC)."""
    return calendar.timegm(time.strptime(stamp, "%Y-%m-%dT%H:%M:%SZ"))


def get(cluster: Cluster, kind: str, name: str, ns: str) -> dict[str, Any] | None:
    """One object as JSON, or None."""
    try:
        return json.loads(cluster.kubectl("get", kind, name, "-n", ns, "-o", "json"))
    except KubectlError as exc:
        if "NotFound" in exc.stderr:
            return None
        raise


def items(cluster: Cluster, kind: str, ns: str, selector: str) -> list[dict[str, Any]]:
    """Objects of a kind matching a label selector."""
    return json.loads(cluster.kubectl("get", kind, "-n", ns, "-l", selector, "-o", "json"))["items"]


def condition(obj: dict[str, Any] | None, type_: str) -> dict[str, Any]:
    """A status condition of a ClipService ({} when absent)."""
    for cond in ((obj or {}).get("status") or {}).get("conditions") or []:
        if cond["type"] == type_:
            return cond
    return {}


def clip(cluster: Cluster, ns: str, name: str, spec: dict[str, Any]) -> None:
    """kubectl apply a ClipService."""
    _apply(cluster, "ClipService", ns, name, spec)


def clipjob(cluster: Cluster, ns: str, name: str, spec: dict[str, Any]) -> None:
    """kubectl apply a ClipJob."""
    _apply(cluster, "ClipJob", ns, name, spec)


def _apply(cluster: Cluster, kind: str, ns: str, name: str, spec: dict[str, Any]) -> None:
    doc = {
        "apiVersion": "clipserve.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": name, "namespace": ns},
        "spec": spec,
    }
    cluster.kubectl("apply", "-f", "-", input=json.dumps(doc))


def patch(cluster: Cluster, ns: str, name: str, spec: dict[str, Any]) -> None:
    """Merge-patch a ClipService's spec."""
    cluster.kubectl(
        "patch", "clip", name, "-n", ns, "--type", "merge", "-p", json.dumps({"spec": spec})
    )


def fully_ready(cluster: Cluster, ns: str, name: str) -> dict[str, Any] | None:
    """The ClipService once its status describes the current spec with every pod ready."""
    obj = get(cluster, "clip", name, ns)
    if not obj or not obj.get("status"):
        return None
    status = obj["status"]
    current = status.get("observedGeneration") == obj["metadata"]["generation"]
    done = not status.get("pendingModel") and status.get("activeModel") == obj["spec"]["model"]
    if current and done and condition(obj, "Ready").get("status") == "True":
        return obj
    return None


def events(cluster: Cluster, ns: str, name: str) -> list[dict[str, Any]]:
    """Kubernetes Events about a ClipService."""
    out = cluster.kubectl(
        "get",
        "events",
        "-n",
        ns,
        "--field-selector",
        f"involvedObject.kind=ClipService,involvedObject.name={name}",
        "-o",
        "json",
    )
    return json.loads(out)["items"]


def degraded(cluster: Cluster, ns: str, name: str, reason: str) -> dict[str, Any] | None:
    """The Degraded condition once it is True with this reason."""
    cond = condition(get(cluster, "clip", name, ns), "Degraded")
    return cond if cond.get("status") == "True" and cond.get("reason") == reason else None


def recovered(cluster: Cluster, ns: str, name: str) -> dict[str, Any] | None:
    """The ClipService once Ready with nothing Degraded."""
    obj = fully_ready(cluster, ns, name)
    return obj if obj and condition(obj, "Degraded")["status"] == "False" else None


def warnings(cluster: Cluster, ns: str, name: str, reason: str) -> list[dict[str, Any]]:
    """Warning events about the ClipService with this reason."""
    return [
        e for e in events(cluster, ns, name) if e["type"] == "Warning" and e["reason"] == reason
    ]
