"""The tiny test model, served by a real `clipserve serve` process (clipserve.bench.server)."""

from __future__ import annotations

from pathlib import Path

from clipserve.bench import server as launcher
from clipserve.bench.server import ServerProcess, free_port

MODEL_CONFIGS = Path(__file__).parent / "model_configs"
# A sitecustomize that makes a server's forward passes fail as a broken GPU would.
BROKEN_GPU = Path(__file__).parent / "broken_gpu"
# A tiny open_clip architecture (2-layer towers, 32-d embeddings) with random weights: a real
# model through the real code paths, fast enough for CPU tests.
TINY = "Tiny-ViT-T:random"

Server = ServerProcess  # the name the tests use

__all__ = ["MODEL_CONFIGS", "TINY", "Server", "free_port", "start_server"]


def start_server(
    *args: str,
    model: str = TINY,
    env: dict[str, str] | None = None,
    wait_ready: bool = True,
    timeout: float = 120,
    port: int | None = None,
) -> Server:
    """Start `clipserve serve` with the test model configs, offline, on `port` (or a free one),
    and (by default) wait until /readyz says 200. In fp32 unless `args` or `env` say otherwise:
    tests compare served vectors with open_clip's and with each other at fp32 tolerances."""
    return launcher.start_server(
        model,
        "--model-config-dir",
        str(MODEL_CONFIGS),
        *args,
        env={"HF_HUB_OFFLINE": "1", "CLIPSERVE_DTYPE": "fp32", **(env or {})},
        wait_ready=wait_ready,
        timeout=timeout,
        port=port,
    )
