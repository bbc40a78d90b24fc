"""Which failures of a forward pass say the device is broken, rather than one item bad.

After an illegal memory access, an Xid error or a lost GPU, every CUDA call of the process
fails the same way until it restarts; the batcher counts batches that failed like that and,
once a known-good item fails too, takes its model out of service (batching.py) so that liveness
restarts the pod. Out-of-memory is not such a failure: it passes once memory is free.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

import torch

log = logging.getLogger(__name__)

# Out-of-memory in the words of the caching allocator, the CUDA runtime, cuBLAS and the CPU one.
_OUT_OF_MEMORY = re.compile(
    r"out of memory|CUBLAS_STATUS_ALLOC_FAILED|can't allocate memory|DefaultCPUAllocator"
)


def device_failure(exc: BaseException | None) -> bool:
    """True for an error the device or its runtime raised (CUDA errors, cuBLAS/cuDNN status,
    a RuntimeError out of the model's kernels); False for out-of-memory and for the errors an
    item's own content raises (ValueError, TypeError, ...), which fail that item alone."""
    if exc is None or isinstance(exc, torch.cuda.OutOfMemoryError | MemoryError):
        return False
    if isinstance(exc, NotImplementedError | RecursionError):  # RuntimeErrors of code, not device
        return False
    # torch >= 2.8 raises CUDA errors as torch.AcceleratorError, a RuntimeError; older ones as a
    # plain RuntimeError ("CUDA error: an illegal memory access was encountered"). Inputs reach
    # the model validated and preprocessed to its shapes, so a RuntimeError from its kernels is
    # the runtime's; that one item's content caused it is ruled out by a known-good item.
    return isinstance(exc, RuntimeError) and not _OUT_OF_MEMORY.search(str(exc))


class DeviceWatch:
    """A model's verdict on its device, from the outcomes of its batches (compute threads).

    Per worker, it counts batches in a row whose every item failed with a device failure; at
    `fail_after` (0: never) it asks the model to embed again an item it embedded before, so
    that a run of bad items from one client cannot take the model down: only a device that
    fails on known-good input is broken.
    """

    def __init__(
        self, name: str, workers: int, fail_after: int, embed: Callable[[str, Any], object]
    ) -> None:
        self.name = name  # the model's, for the log
        self.fail_after = fail_after
        self._embed = embed  # (modality, payload): one forward pass over that item
        self._in_row = [0] * workers
        self._known_good: dict[str, Any] = {}  # per modality: a payload embedded lately

    def judge(self, worker: int, modality: str, outcomes: list[tuple[Any, Any]]) -> str | None:
        """Why the device is broken, or None; `outcomes`: (payload, result or exception)."""
        causes = (r.__cause__ if isinstance(r, BaseException) else None for _, r in outcomes)
        if not all(device_failure(c) for c in causes):  # stops at the first success
            self._in_row[worker] = 0
            for payload, result in outcomes:
                if not isinstance(result, BaseException):
                    self._known_good[modality] = payload
                    break
            return None
        self._in_row[worker] += 1
        failed = self._in_row[worker]
        if not self.fail_after or failed < self.fail_after:
            return None
        error = outcomes[-1][1].__cause__
        probe = self._known_good.get(modality)
        if probe is not None:
            try:
                self._embed(modality, probe)
            except Exception as exc:
                if not device_failure(exc):
                    return None
                error = exc
            else:
                log.warning(
                    "%s: %d %s batches in a row failed (%s), but an item embedded before still "
                    "embeds: blaming the items, not the device",
                    self.name,
                    failed,
                    modality,
                    error,
                )
                self._in_row[worker] = 0
                return None
        also = ", and so did an item it embedded before" if probe is not None else ""
        return (
            f"{failed} {modality} batches in a row failed with a device error "
            f"({type(error).__name__}: {error}){also}"
        )
