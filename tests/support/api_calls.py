"""The API calls the operator's own client makes (kube.KubeClient; kopf's watches are not
counted), recorded from the test thread while the operator runs in-process, by verb and resource.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from clipserve_operator.kube import KubeClient


@dataclass(frozen=True)
class Call:
    """One request: the verb as Kubernetes names it (get, list, patch, delete, discovery) and
    the resource (`deployments`, `pods/log`, `clipservices/status`); `name` for a single one."""

    verb: str
    resource: str
    namespace: str = ""
    name: str = ""

    def __str__(self) -> str:
        return f"{self.verb} {self.resource}"


def classify(method: str, path: str) -> Call:
    """A request path as (verb, resource): /api/v1/namespaces/NS/pods is `list pods`."""
    parts = path.strip("/").split("/")
    rest = parts[2:] if parts[0] == "api" else parts[3:]  # past api/v1 or apis/GROUP/VERSION
    if not rest:
        return Call("discovery", "/".join(parts[1:]))
    namespace = ""
    if rest[0] == "namespaces" and len(rest) >= 3:
        namespace, rest = rest[1], rest[2:]
    resource, name = rest[0], rest[1] if len(rest) > 1 else ""
    if len(rest) > 2:
        resource += f"/{rest[2]}"  # a subresource: status, log, scale
    verb = method.lower()
    if verb == "get" and not name:
        verb = "list"
    return Call(verb, resource, namespace, name)


class ApiCalls:
    """Every call of KubeClient._send from now on, kept in order (the operator's thread appends,
    the test's reads a copy)."""

    def __init__(self) -> None:
        self._calls: list[Call] = []
        self._lock = threading.Lock()

    def add(self, call: Call) -> None:
        with self._lock:
            self._calls.append(call)

    @property
    def calls(self) -> list[Call]:
        with self._lock:
            return list(self._calls)

    def clear(self) -> None:
        with self._lock:
            self._calls.clear()

    def count(self) -> Counter[str]:
        """Calls by "verb resource"."""
        return Counter(str(c) for c in self.calls)

    def passes(self, namespace: str, clipservice: str) -> list[list[Call]]:
        """The calls in a namespace split into reconciles: each one starts by reading its
        ClipService (reconciles of other ClipServices run at the same time)."""
        out: list[list[Call]] = []
        for call in self.calls:
            if call.namespace != namespace:
                continue
            if call.verb == "get" and call.resource == "clipservices" and call.name == clipservice:
                out.append([])
            if out:
                out[-1].append(call)
        return out


@contextmanager
def recorded(monkeypatch: pytest.MonkeyPatch) -> Iterator[ApiCalls]:
    """Record the operator's API calls (every KubeClient, whichever thread runs it)."""
    calls = ApiCalls()
    send = KubeClient._send

    async def counting_send(
        self: KubeClient, method: str, path: str, **kwargs: Any
    ) -> Any:  # the wrapped method's own signature
        calls.add(classify(method, path))
        return await send(self, method, path, **kwargs)

    monkeypatch.setattr(KubeClient, "_send", counting_send)
    try:
        yield calls
    finally:
        monkeypatch.setattr(KubeClient, "_send", send)


def table(counts: Mapping[str, int]) -> str:
    """Counts as `verb resource: n`, one per line, sorted."""
    return "\n".join(f"  {k}: {v}" for k, v in sorted(counts.items()))
