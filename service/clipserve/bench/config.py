"""One `clipserve bench` run's settings (the flags of `clipserve bench`, as dataclasses)."""

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


@dataclass(frozen=True)
class ZeroShot:
    """The scenario's size: labels x templates prompts, `requests` single-image requests."""

    labels: int = 200
    templates: int = 10
    requests: int = 20

    @classmethod
    def parse(cls, raw: str) -> ZeroShot:
        """`LABELSxTEMPLATESxREQUESTS`, e.g. 200x10x20."""
        try:
            labels, templates, requests = (int(x) for x in raw.lower().split("x"))
        except ValueError as exc:
            raise ValueError(f"{raw!r} is not LABELSxTEMPLATESxREQUESTS (e.g. 200x10x20)") from exc
        if not (0 < labels <= 998 and 0 < templates <= 80 and requests > 0):
            raise ValueError("labels 1-998, templates 1-80, requests > 0")
        return cls(labels, templates, requests)
