"""Progress of a run: a redrawn bar on a terminal; JSON lines on stdout otherwise (what the
ClipJob operator parses: docs/corpus.md)."""

from __future__ import annotations

import json
import sys
import time
from typing import IO, Any


class Progress:
    """Items done and failed of those this process has to do; events as JSON lines, or a bar."""

    def __init__(self, todo_items: int | None, *, bar: bool | None = None) -> None:
        self.todo = todo_items  # None when unknown (WebDataset)
        self.items = 0
        self.failed = 0
        self._bar = sys.stderr.isatty() if bar is None else bar
        self._lines: IO[str] = sys.stdout
        self._start = self._drawn = time.monotonic()
        self._cpu_start = time.process_time()

    @property
    def seconds(self) -> float:
        """Since this Progress was made (after the model loaded)."""
        return time.monotonic() - self._start

    @property
    def cpu_seconds(self) -> float:
        """CPU time of this process (every thread) since this Progress was made."""
        return time.process_time() - self._cpu_start

    @property
    def rate(self) -> float:
        """Items per second so far."""
        return self.items / max(self.seconds, 1e-6)

    def event(self, name: str, **fields: Any) -> None:
        """One JSON line (lines mode); in bar mode, a shard event redraws the bar."""
        if self._bar:
            if name != "shard":
                self._say(f"{name}: " + ", ".join(f"{k} {v}" for k, v in fields.items()))
            return
        self._lines.write(json.dumps({"event": name, **fields}) + "\n")
        self._lines.flush()

    def item(self, failed: bool) -> None:
        """One more item done."""
        self.items += 1
        self.failed += failed
        now = time.monotonic()
        if self._bar and now - self._drawn >= 0.2:
            self._drawn = now
            self._draw()

    def finish(self) -> None:
        """The final bar, and a new line under it."""
        if self._bar:
            self._draw()
            sys.stderr.write("\n")
            sys.stderr.flush()

    def _draw(self) -> None:
        rate = self.rate
        if self.todo:
            share = min(self.items / self.todo, 1.0)
            eta = (self.todo - self.items) / rate if rate > 0 else float("inf")
            bar = f"[{'#' * int(30 * share)}{'.' * (30 - int(30 * share))}] {100 * share:5.1f}% "
            tail = f" ETA {_clock(eta)}"
            count = f"{self.items}/{self.todo}"
        else:
            bar, tail, count = "", "", str(self.items)
        sys.stderr.write(
            f"\r{bar}{count} items, {rate:.1f} items/s, {self.failed} failed{tail}\033[K"
        )
        sys.stderr.flush()

    def _say(self, text: str) -> None:
        sys.stderr.write("\r\033[K" + text + "\n")
        sys.stderr.flush()


def _clock(seconds: float) -> str:
    if seconds == float("inf"):
        return "--:--"
    minutes, s = divmod(int(seconds), 60)
    hours, m = divmod(minutes, 60)
    return f"{hours}:{m:02d}:{s:02d}" if hours else f"{m:02d}:{s:02d}"
