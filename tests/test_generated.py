"""make generate / make verify-generated (scripts/generate/): what a stale file's message says,
that a region is written between its markers only, and that every file that calls itself
generated is one of theirs (not a second generator's)."""

from __future__ import annotations

import subprocess

import pytest

from scripts import generate
from scripts.generate.artefact import ROOT, Artefact


def test_a_stale_file_is_named_with_its_source_and_the_command_that_fixes_it() -> None:
    artefact = Artefact("charts/clipserve/metrics.json", "a test", lambda: "{}\n")
    (problem,) = generate.stale([artefact])
    first, *diff = problem.splitlines()
    assert first == (
        "charts/clipserve/metrics.json is stale: generated from a test; run `make generate`"
    )
    assert "+{}" in diff


def test_a_region_is_written_between_its_markers_and_nothing_else_changes() -> None:
    table = Artefact("README.md", "a test", lambda: "| new |", region="t")
    text = "before\n<!-- t:start -->\n| old |\n<!-- t:end -->\nafter\n"
    assert table.expected(text) == "before\n<!-- t:start -->\n| new |\n<!-- t:end -->\nafter\n"
    with pytest.raises(ValueError, match=r"README\.md has no <!-- t:start -->"):
        table.expected("the markers were deleted")


def test_every_file_that_says_it_is_generated_is_one_make_generate_writes() -> None:
    tracked = subprocess.run(
        ["git", "ls-files"], cwd=ROOT, check=True, capture_output=True, text=True
    ).stdout.splitlines()
    claims = set()
    for path in tracked:
        file = ROOT / path
        if file.suffix in {".py", ".md"} or not file.is_file():
            continue  # code and prose may mention the words; a header is what counts
        with file.open(encoding="utf-8", errors="replace") as fh:
            head = [fh.readline(500).lower() for _ in range(3)]
        if any("generated" in line and "do not edit" in line for line in head):
            claims.add(path)
    assert claims, "no generated file has a header: has the header's wording changed?"
    unregistered = sorted(claims - {a.path for a in generate.ARTEFACTS})
    assert not unregistered, f"generated outside scripts/generate/: {unregistered}"
