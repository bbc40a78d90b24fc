"""One `clipserve bench` run's settings (the flags of `clipserve bench`, as a dataclass)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass
class BenchConfig:
    """One `clipserve bench` run."""

    url: str = "http://127.0.0.1:3000"
    spawn: bool = False
    model: str = "ViT-B-32:random"  # what --spawn serves
    server_args: tuple[str, ...] = ()
    model_config_dir: str | None = None
    workloads: tuple[str, ...] = ("text", "jpeg224", "jpeg640")
    concurrency: tuple[int, ...] = (1, 8, 32)
    requests: int = 256
    items: int = 1
    ceiling: bool = True
    batch_sizes: tuple[int, ...] = (1, 4, 8, 16, 32, 64)
    ceiling_min_s: float = 1.0
    api_key: str | None = None
    log: Path | None = None
    client: str = "raw"  # or "httpx"
