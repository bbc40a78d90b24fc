"""The one poll-until helper: wait for a server, a cluster or a process to reach a state."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def eventually(
    probe: Callable[[], T | None],
    what: str,
    timeout_s: float = 120,
    *,
    every_s: float = 0.5,
    not_yet: tuple[type[Exception], ...] = (),
) -> T:
    """Poll probe() until it returns something truthy and return that; an exception in
    `not_yet` (say, a connection refused while a server starts) counts as not yet. The timeout
    only bounds a hung system: it is a readiness wait, never a timing assertion."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while True:
        try:
            last = probe()
        except not_yet as exc:
            last = exc
        else:
            if last:
                return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what} (last: {last!r})")
        time.sleep(every_s)
