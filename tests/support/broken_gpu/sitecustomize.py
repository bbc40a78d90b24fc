"""A GPU that breaks on demand, in a real `clipserve serve` child process (a real GPU cannot be
broken here): Python imports this at start-up when the child's PYTHONPATH begins with this
folder (tests/service/http/test_liveness.py).

While the file that CLIPSERVE_TEST_BROKEN_DEVICE names exists, every forward pass of every
model raises what torch raises after an illegal memory access; once it is gone, passes work
again. The seam is the model wrapper's two forward passes: the batcher, its verdict and the
HTTP server above them are the real ones.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable
from typing import Any

from clipserve.models.clip import ClipModel

ILLEGAL_ACCESS = "CUDA error: an illegal memory access was encountered"
_FLAG = os.environ.get("CLIPSERVE_TEST_BROKEN_DEVICE", "")


def _breakable(forward: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(forward)
    def wrapped(*args: Any, **kwargs: Any) -> Any:
        if _FLAG and os.path.exists(_FLAG):
            raise RuntimeError(ILLEGAL_ACCESS)
        return forward(*args, **kwargs)

    return wrapped


ClipModel.encode_text = _breakable(ClipModel.encode_text)  # type: ignore[method-assign]
ClipModel.encode_image = _breakable(ClipModel.encode_image)  # type: ignore[method-assign]
