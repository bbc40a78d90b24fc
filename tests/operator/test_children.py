"""The reconcile's one view of a ClipService's children, from kopf's indexes (children.py)."""

from __future__ import annotations

from typing import Any

import kopf
from clipserve_operator.children import Indexes, index_entry
from clipserve_operator.constants import OWNER_LABEL

NS, NAME = "team", "search"


def obj(kind: str, name: str, uid: str = "", owner: str = NAME, **extra: Any) -> dict[str, Any]:
    meta = {"name": name, "namespace": NS, "uid": uid or f"uid-{name}"}
    return {"kind": kind, "metadata": {**meta, "labels": {OWNER_LABEL: owner}}, **extra}


def indexes(**objects: list[dict[str, Any]]) -> tuple[Indexes, dict[str, dict[Any, list[Any]]]]:
    """Indexes over plain dicts (kopf's are mappings of the same shape), and those dicts."""
    raw: dict[str, dict[Any, list[Any]]] = {
        which: {(NS, NAME): list(objects.get(which, []))}
        for which in ("deployments", "jobs", "pods", "autoscalers")
    }
    return Indexes(**raw), raw


def test_an_index_keeps_the_object_as_sent_under_its_owner() -> None:
    pod = obj("Pod", "search-blue-1", status={"phase": "Running"})
    entry = index_entry(NS, NAME, kopf.Body(pod))
    assert entry == {(NS, NAME): pod} and type(entry[(NS, NAME)]) is dict


def test_a_view_is_taken_once_and_in_list_order() -> None:
    index, raw = indexes(
        deployments=[obj("Deployment", "search-green"), obj("Deployment", "search-blue")],
        pods=[obj("Pod", "b"), obj("Pod", "a")],
    )
    view = index.children(NS, NAME)
    raw["pods"][(NS, NAME)].append(obj("Pod", "c"))  # an event after the pass began
    assert [p["metadata"]["name"] for p in view.pods] == ["a", "b"]
    assert list(view.deployments) == ["search-blue", "search-green"]
    assert index.children(NS, "other").pods == ()


def test_what_the_pass_applied_replaces_what_was_watched() -> None:
    old = obj("Deployment", "search-blue", spec={"replicas": 5})
    index, _ = indexes(deployments=[old])
    applied = [
        obj("Deployment", "search-blue", spec={"replicas": 2}),
        obj("HorizontalPodAutoscaler", "search-blue"),
        obj("Service", "search"),  # not a kind the view holds
        obj("Deployment", "other-blue", owner="other"),  # another ClipService's
    ]
    view = index.children(NS, NAME).with_applied(applied)
    assert list(view.deployments) == ["search-blue"]
    assert view.deployments["search-blue"]["spec"] == {"replicas": 2}
    assert [h["metadata"]["name"] for h in view.autoscalers] == ["search-blue"]
