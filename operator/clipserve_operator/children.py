"""A ClipService's children as the operator's watches last saw them (pure).

kopf already watches every child kind the reconcile reads (handlers.py: each change of one
triggers a reconcile of its owner), so it also keeps them in indexes, by owner, and a reconcile
takes one snapshot of those (`Children`) instead of listing the API: every step of a pass sees
the same view, and a settled ClipService costs no list call. Reads that decide a deletion, and
prune, still ask the API (reconcile.py, apply.py).
"""

from __future__ import annotations

from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from .constants import OWNER_LABEL, Obj

# The kinds indexed (handlers.py), as (apiVersion, kind).
WATCHED_KINDS: tuple[tuple[str, str], ...] = (
    ("apps/v1", "Deployment"),
    ("batch/v1", "Job"),
    ("v1", "Pod"),
    ("autoscaling/v2", "HorizontalPodAutoscaler"),
)
# The key of every index: (namespace, name) of the ClipService a child belongs to.
Owner = tuple[str, str]
# What handlers.py's kopf indexes are (kopf.Index[Owner, Obj] is such a mapping).
OwnedIndex = Mapping[Owner, Collection[Obj]]


def index_entry(namespace: str | None, owner: str, body: Mapping[str, Any]) -> dict[Owner, Obj]:
    """What an index keeps of a child: the object as the API server sent it, under its owner.
    A plain dict of the event's body: kopf replaces the body with each event, it never changes
    one in place."""
    return {(namespace or "", owner): dict(body)}


def _name(obj: Obj) -> str:
    return str(obj["metadata"]["name"])


def _uid(obj: Obj) -> str:
    return str(obj["metadata"].get("uid", ""))


def _sorted(objects: Iterable[Obj]) -> tuple[Obj, ...]:
    """In the order a list call returns them (by name): messages built from several pods read
    the same whichever order the events came in."""
    return tuple(sorted(objects, key=_name))


@dataclass(frozen=True)
class Children:
    """What one reconcile knows of its ClipService's children: the indexes as they were when it
    began, then what it applied itself (the API server's answers, as new as anything watched)."""

    owner: Owner
    deployments: Mapping[str, Obj] = field(default_factory=dict)  # by name
    jobs: Mapping[str, Obj] = field(default_factory=dict)  # by name
    pods: tuple[Obj, ...] = ()
    autoscalers: tuple[Obj, ...] = ()  # HorizontalPodAutoscalers, the chart's or KEDA's

    def with_applied(self, applied: Iterable[Obj]) -> Children:
        """This view with the objects the pass applied, as the API server stored them: the
        status then describes what was just applied, as a list after the apply did."""
        kinds: dict[str, dict[str, Obj]] = {
            "Deployment": dict(self.deployments),
            "Job": dict(self.jobs),
            "HorizontalPodAutoscaler": {_name(h): h for h in self.autoscalers},
        }
        for obj in applied:
            labels = obj["metadata"].get("labels") or {}
            if obj.get("kind") in kinds and labels.get(OWNER_LABEL) == self.owner[1]:
                kinds[obj["kind"]][_name(obj)] = obj
        return Children(
            owner=self.owner,
            deployments=kinds["Deployment"],
            jobs=kinds["Job"],
            pods=self.pods,
            autoscalers=_sorted(kinds["HorizontalPodAutoscaler"].values()),
        )


class Indexes:
    """kopf's indexes of the watched children by owner (live: kopf updates them as events
    arrive), less objects known to be deleted though an index still holds them (`forget`)."""

    def __init__(
        self,
        *,
        deployments: OwnedIndex,
        jobs: OwnedIndex,
        pods: OwnedIndex,
        autoscalers: OwnedIndex,
    ) -> None:
        self._indexes = {
            "deployments": deployments,
            "jobs": jobs,
            "pods": pods,
            "autoscalers": autoscalers,
        }
        self._gone: set[str] = set()

    def _of(self, which: str, owner: Owner) -> tuple[Obj, ...]:
        # A copy (sorted), so that events arriving while the pass awaits do not change its view.
        found = self._indexes[which].get(owner, ())
        return _sorted(o for o in found if _uid(o) not in self._gone)

    def children(self, namespace: str, name: str) -> Children:
        """A snapshot of one ClipService's children."""
        owner = (namespace, name)
        return Children(
            owner=owner,
            deployments={_name(d): d for d in self._of("deployments", owner)},
            jobs={_name(j): j for j in self._of("jobs", owner)},
            pods=self._of("pods", owner),
            autoscalers=self._of("autoscalers", owner),
        )

    def uids(self, namespace: str | None = None) -> set[str]:
        """The uid of every child the indexes hold (in one namespace, or all)."""
        return {
            _uid(obj)
            for index in self._indexes.values()
            for (ns, _), objects in index.items()
            if namespace is None or ns == namespace
            for obj in objects
        }

    def forget(self, deleted: Iterable[str]) -> None:
        """Leave out these uids from now on: objects deleted though an index still holds them.
        kopf relists after a watch expired (410 Gone) but sends no DELETED for what went away
        meanwhile; a uid is never reused, so one that a list no longer returns is gone for good.
        Kept only while an index still holds it."""
        held = self.uids()
        self._gone = {uid for uid in self._gone | set(deleted) if uid in held}
