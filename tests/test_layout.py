"""The packages' own imports point one way: no module imports itself back through others,
and the service's rooms import only the rooms below them."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {"clipserve": ROOT / "service/clipserve", "clipserve_operator": ROOT / "operator"}


def _modules(package: str) -> dict[str, Path]:
    base = PACKAGES[package]
    top = base if base.name == package else base / package
    out = {}
    for path in top.rglob("*.py"):
        parts = path.relative_to(top.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = path
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that `name` imports anywhere (also inside functions and
    TYPE_CHECKING blocks: a lazy import still ties the two modules together)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from pkg import mod` names a module; `from mod import thing` names mod
            targets = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        else:
            continue
        found |= {t for t in targets if t in known and t != name}
    # `from pkg.mod import x` also names pkg: keep only the deepest module named
    return {t for t in found if not any(o.startswith(t + ".") for o in found)}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


@pytest.mark.parametrize("package", sorted(PACKAGES))
def test_no_module_imports_itself_back(package: str):
    modules = _modules(package)
    graph = {name: _imports(name, path, set(modules)) for name, path in modules.items()}
    assert graph, package
    assert _cycle(graph) is None, " -> ".join(_cycle(graph) or [])


def test_the_cycle_finder_finds_a_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


# The service's rooms, each allowed to import only the rooms below it: the HTTP edge calls the
# engine, the engine runs models, models and the engine take bytes from sources; `clipserve
# embed` (corpus) stands beside the HTTP edge, on the engine, and neither imports the other.
# Shared modules (errors, schemas, metrics, settings, redact; tracing, tracing_config and otel)
# import no room; the programs on top (cli, gate, bench) may import any.
ROOMS = {"sources": 0, "models": 1, "engine": 2, "corpus": 3, "http": 3}
SHARED = {"errors", "schemas", "metrics", "settings", "redact"} | {
    "tracing",
    "tracing_config",
    "otel",
}


def _room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ROOMS else None


def _against_the_rooms(graph: dict[str, set[str]]) -> list[str]:
    wrong = []
    for name, targets in sorted(graph.items()):
        for target in sorted(targets):
            here, there = _room(name), _room(target)
            shared = name.split(".")[-1] in SHARED and name.count(".") == 1
            if shared and (there or target.split(".")[-1] not in SHARED):
                wrong.append(f"{name} (shared) -> {target}")
            elif here and there and ROOMS[there] > ROOMS[here]:
                wrong.append(f"{name} -> {target} (up a room)")
            elif here and there and here != there and ROOMS[there] == ROOMS[here]:
                wrong.append(f"{name} -> {target} (a room beside it)")
            elif here and not there and target.split(".")[-1] not in SHARED | {"clipserve"}:
                wrong.append(f"{name} -> {target} (a program on top)")
    return wrong


def test_the_service_rooms_import_only_downwards():
    modules = _modules("clipserve")
    assert {_room(m) for m in modules} >= set(ROOMS), "a room is missing"
    graph = {name: _imports(name, path, set(modules)) for name, path in modules.items()}
    assert _against_the_rooms(graph) == []


def test_the_room_check_finds_an_upward_import():
    graph = {
        "clipserve.models.clip": {"clipserve.engine.cache"},
        "clipserve.errors": {"clipserve.http.app"},
        "clipserve.engine.cache": {"clipserve.cli", "clipserve.metrics"},
        "clipserve.corpus.run": {"clipserve.http.app", "clipserve.engine.engine"},
    }
    assert _against_the_rooms(graph) == [
        "clipserve.corpus.run -> clipserve.http.app (a room beside it)",
        "clipserve.engine.cache -> clipserve.cli (a program on top)",
        "clipserve.errors (shared) -> clipserve.http.app",
        "clipserve.models.clip -> clipserve.engine.cache (up a room)",
    ]
