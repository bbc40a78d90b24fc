"""docs/architecture.md names every module of the service and the operator, and only modules
that exist: a module added, moved or renamed without its line in the layout fails here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOC = (ROOT / "docs" / "architecture.md").read_text()


def _section(title: str) -> str:
    start = DOC.index(f"\n## {title}")
    end = DOC.find("\n## ", start + 1)
    return DOC[start:end]


SECTIONS = {
    "service": ("Service (`service/clipserve/`)", ROOT / "service" / "clipserve"),
    "operator": (
        "Operator (`operator/clipserve_operator/`)",
        ROOT / "operator" / "clipserve_operator",
    ),
}


@pytest.mark.parametrize("part", sorted(SECTIONS))
def test_the_layout_names_every_module(part: str):
    title, package = SECTIONS[part]
    text = _section(title)
    missing = [
        str(path.relative_to(package))
        for path in sorted(package.rglob("*.py"))
        if path.name not in ("__init__.py", "__main__.py")
        and "bench" not in path.parts  # bench/ is described as one folder
        and f"`{path.name}`" not in text
        and f"{path.relative_to(package)}`" not in text
        and f"`{path.relative_to(package)}" not in text
        and f", {path.name}" not in text
        and f"`{path.stem}`" not in text
    ]
    assert missing == [], f"docs/architecture.md's {part} section does not name {missing}"


@pytest.mark.parametrize("part", sorted(SECTIONS))
def test_every_module_the_layout_names_exists(part: str):
    title, package = SECTIONS[part]
    # paths under tests/, scripts/ or docs/ are the repository's, not the package's
    named = {
        n
        for n in re.findall(r"`((?:[a-z_]+/)*[a-z_]+\.py)`", _section(title))
        if n.split("/")[0] not in ("tests", "scripts", "docs")
    }
    files = {str(p.relative_to(package)) for p in package.rglob("*.py")}
    names = {Path(f).name for f in files}
    gone = sorted(n for n in named if n not in files and n not in names)
    assert gone == [], (
        f"docs/architecture.md's {part} section names modules that do not exist: {gone}"
    )
