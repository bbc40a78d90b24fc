"""Progress of a download: a redrawn bar on a terminal, plain lines for the operator otherwise."""

from __future__ import annotations

import sys
import time
from typing import IO


class Progress:
    """Bytes done of the total over every file: a redrawn bar on a terminal, plain lines
    (`progress DONE/TOTAL bytes (P%) R MB/s`, which the operator reads) otherwise."""

    def __init__(
        self, total: int, *, out: IO[str] | None = None, bar: bool | None = None, every_s=2.0
    ) -> None:
        self.total = total
        self.done = 0
        self._out = out or sys.stderr
        self._bar = self._out.isatty() if bar is None else bar
        self._every_s = every_s
        self._start = self._last = time.monotonic()
        self._drawn = False
        self._expected: set[str] = set()

    def expect(self, key: str, n: int) -> None:
        """Add a file's size to the total once it is known (from its first response)."""
        if key not in self._expected:
            self._expected.add(key)
            self.total += n

    def add(self, n: int) -> None:
        """Count `n` more bytes (negative when a restarted file throws its part away)."""
        self.done += n
        now = time.monotonic()
        if now - self._last >= (0.2 if self._bar else self._every_s):
            self._last = now
            self._show()

    def say(self, text: str) -> None:
        """Print one message line (above the bar on a terminal)."""
        if self._drawn:
            self._out.write("\r\033[K")
            self._drawn = False
        self._out.write(text + "\n")
        self._out.flush()

    def finish(self) -> None:
        """Show the final count."""
        self._show()
        if self._drawn:
            self._out.write("\n")
            self._drawn = False
        self._out.flush()

    def _show(self) -> None:
        pct = 100.0 * self.done / self.total if self.total else 100.0
        rate = self.done / max(time.monotonic() - self._start, 1e-6) / 1e6
        if self._bar:
            filled = int(30 * pct / 100)
            self._out.write(
                f"\r[{'#' * filled}{'.' * (30 - filled)}] {pct:5.1f}% "
                f"{self.done / 1e6:,.1f}/{self.total / 1e6:,.1f} MB {rate:.1f} MB/s\033[K"
            )
            self._drawn = True
        else:
            self._out.write(
                f"progress {self.done}/{self.total} bytes ({pct:.0f}%) {rate:.1f} MB/s\n"
            )
        self._out.flush()
