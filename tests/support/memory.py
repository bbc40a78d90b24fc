"""How much a server process's resident memory grows while a test does something to it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from tests.support.server import Server

T = TypeVar("T")
MB = 2**20


@dataclass(frozen=True)
class Growth:
    """Resident memory before, at its peak during, and after: bytes."""

    before: int
    peak: int
    after: int

    @property
    def peak_growth(self) -> int:
        """How far above `before` the process ever was meanwhile."""
        return self.peak - self.before

    def __str__(self) -> str:
        return (
            f"RSS {self.before / MB:.1f} MB before, peak {self.peak / MB:.1f} MB "
            f"(+{self.peak_growth / MB:.1f}), {self.after / MB:.1f} MB after"
        )


def measured(server: Server, action: Callable[[], T]) -> tuple[T, Growth]:
    """Run `action` and measure the server's RSS around it; its peak (VmHWM) is reset first
    (Linux's clear_refs), so a peak from start-up does not hide what `action` cost."""
    Path(f"/proc/{server.proc.pid}/clear_refs").write_text("5")
    before = server.memory()["rss_bytes"]
    result = action()
    after = server.memory()
    return result, Growth(before, after["peak_rss_bytes"], after["rss_bytes"])
