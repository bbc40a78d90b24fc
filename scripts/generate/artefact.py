"""A generated file (or a marked region of a hand-written one) and the two things done with it:
rewrite it, or say that it is stale. `make generate` and `make verify-generated` do these for
every artefact; a test that guards one calls `stale()` on it, so both run the same generator."""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FIX = "make generate"
DIFF_LINES = 30  # enough to see what changed; the fix is to regenerate, not to read it all


@dataclass(frozen=True)
class Artefact:
    """What `path` holds, or what lies between its `<!-- region:start/end -->` markers."""

    path: str  # from the repository root
    source: str  # what it is generated from, for the messages
    generate: Callable[[], str]
    region: str | None = None

    @property
    def name(self) -> str:
        return f"{self.path} ({self.region})" if self.region else self.path

    def current(self) -> str:
        file = ROOT / self.path
        return file.read_text(encoding="utf-8") if file.exists() else ""

    def expected(self, current: str) -> str:
        """The whole file as generated, from its current text (kept outside a region)."""
        if self.region is None:
            return self.generate()
        start, end = f"<!-- {self.region}:start -->", f"<!-- {self.region}:end -->"
        head, found_start, rest = current.partition(start)
        _, found_end, tail = rest.partition(end)
        if not (found_start and found_end):
            raise ValueError(f"{self.path} has no {start} ... {end} to write between")
        return f"{head}{start}\n{self.generate()}\n{end}{tail}"


def stale(artefacts: Iterable[Artefact]) -> list[str]:
    """A message, with the start of the diff, for each artefact its generator would change."""
    messages = []
    for artefact in artefacts:
        current = artefact.current()
        expected = artefact.expected(current)
        if expected != current:
            diff = list(
                difflib.unified_diff(
                    current.splitlines(),
                    expected.splitlines(),
                    f"{artefact.path} (committed)",
                    f"{artefact.path} (generated)",
                    lineterm="",
                )
            )
            more = [f"... {len(diff) - DIFF_LINES} more lines"] if len(diff) > DIFF_LINES else []
            messages.append(
                "\n".join(
                    [
                        f"{artefact.name} is stale: generated from {artefact.source}; run `{FIX}`",
                        *diff[:DIFF_LINES],
                        *more,
                    ]
                )
            )
    return messages


def write(artefacts: Iterable[Artefact]) -> list[str]:
    """Rewrite each artefact that differs from its generator's text; the names rewritten.

    One at a time, reading the file afresh, so two regions of one file both land."""
    written = []
    for artefact in artefacts:
        current = artefact.current()
        expected = artefact.expected(current)
        if expected != current:
            file = ROOT / artefact.path
            file.parent.mkdir(parents=True, exist_ok=True)
            file.write_text(expected, encoding="utf-8")
            written.append(artefact.name)
    return written
