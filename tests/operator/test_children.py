"""The reconcile's one view of a ClipService's children, from kopf's indexes (children.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import kopf
from clipserve_operator.children import Indexes, index_entry
from clipserve_operator.constants import OWNER_LABEL
from clipserve_operator.metrics import Metrics
from clipserve_operator.reconcile import Context, _sweep
from clipserve_operator.settings import Settings

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


def test_a_forgotten_child_is_left_out_while_an_index_still_holds_it() -> None:
    ghost, live = obj("Pod", "gone", uid="u1"), obj("Pod", "here", uid="u2")
    index, raw = indexes(pods=[ghost, live])
    assert index.uids(NS) == {"u1", "u2"} and index.uids("elsewhere") == set()
    index.forget({"u1"})
    assert [p["metadata"]["name"] for p in index.children(NS, NAME).pods] == ["here"]
    raw["pods"][(NS, NAME)].remove(ghost)  # kopf saw it go at last
    index.forget(set())
    raw["pods"][(NS, NAME)].append(ghost)  # only to show that its uid was let go
    assert len(index.children(NS, NAME).pods) == 2


class Lister:
    """The API as the resync's sweep lists it: what `present` holds; `during` runs inside the
    first call, as a watch event arriving while the sweep awaits."""

    def __init__(self, present: list[dict[str, Any]], during: Callable[[], None]) -> None:
        self.present, self.during = present, during

    async def list(self, api_version: str, kind: str, namespace: str, selector: str) -> list[Any]:
        assert selector == OWNER_LABEL and namespace == ""
        self.during()
        self.during = lambda: None
        return [o for o in self.present if o["kind"] == kind]


def test_a_resync_leaves_out_what_the_api_no_longer_has_and_nothing_newer() -> None:
    ghost, live, new = obj("Pod", "gone", uid="u1"), obj("Pod", "here", uid="u2"), obj("Pod", "new")
    index, raw = indexes(pods=[ghost, live])
    lister = Lister([live], during=lambda: raw["pods"][(NS, NAME)].append(new))
    ctx = Context(client=lister, settings=Settings(), metrics=Metrics(), indexes=index)
    asyncio.run(_sweep(ctx, None))
    # the ghost is gone from the view; the pod indexed while the lists ran (not in them) stays
    assert [p["metadata"]["name"] for p in index.children(NS, NAME).pods] == ["here", "new"]
