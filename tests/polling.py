"""Waiting for a cluster (or any eventually-consistent system) to reach a state."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


def eventually(probe: Callable[[], T | None], what: str, timeout_s: float = 120) -> T:
    """Poll until probe() returns something truthy; the timeout only bounds a hung system."""
    deadline = time.monotonic() + timeout_s
    while not (result := probe()):
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.5)
    return result
