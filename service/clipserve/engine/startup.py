"""Start-up: each model loaded, compiled and warmed, then given a started batcher.

`load_all` runs once, in a worker thread (so /healthz answers while weights download), and hands
each model to the engine as soon as it is ready.
"""

from __future__ import annotations

import gc
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, NamedTuple

import torch

from clipserve.engine.batching import ModelBatcher
from clipserve.engine.inputs import IMAGE, TEXT
from clipserve.metrics import Metrics
from clipserve.models import ClipModel, ModelLoadError, ModelSpec, load_model
from clipserve.settings import Settings
from clipserve.tracing import OFF, Tracing

log = logging.getLogger(__name__)

Ready = Callable[[str, ClipModel, ModelBatcher], None]  # takes a model into service, by spec


class Row(NamedTuple):
    """One item's result from a forward pass (in the compute thread)."""

    vector: torch.Tensor
    tokens: int  # tokens of a text, counting start and end; 0 for an image


def load_all(
    settings: Settings,
    specs: list[ModelSpec],
    metrics: Metrics,
    ready: Ready,
    tracing: Tracing = OFF,
) -> None:
    """Load and warm every model, start its batcher and hand both to `ready` (blocking; run in
    a thread)."""
    # In a thread of its own that then exits. torch's OpenMP runtime (libgomp) keeps a team
    # of worker threads for every thread that ran parallel work; once it manages more
    # threads than there are CPUs it stops spin-waiting between parallel regions, and the
    # compute workers' forward passes ran ~30% slower at batch 1 (docs/performance.md). The
    # caller's thread (asyncio.to_thread's) lives on, and so would its team.
    with ThreadPoolExecutor(1, thread_name_prefix="load") as loader:
        try:
            loader.submit(_load_each, settings, specs, metrics, ready, tracing).result()
        except ModelLoadError:
            # start-up reports the message alone; the causes under it are for --log-level debug
            log.debug("model loading failed", exc_info=True)
            raise
    # What exists now (models, their modules, the app) lives until exit: move it out of the
    # cyclic GC's sight. Otherwise every full collection walks all of it with the GIL held:
    # 180 ms in which the event loop and every compute worker stood still (measured at
    # concurrency 32, once per ~3 s).
    gc.collect()
    gc.freeze()


def _load_each(
    settings: Settings, specs: list[ModelSpec], metrics: Metrics, ready: Ready, tracing: Tracing
) -> None:
    """What `load_all` does, in the loader thread."""
    threads = settings.threads()
    torch.set_num_threads(threads)
    for spec in specs:
        model, batcher = _start(spec, settings, metrics, threads, tracing)
        ready(spec.raw, model, batcher)
        log.info(
            "%s ready on %s (%s: %s), max batch %d, %d compute workers",
            spec.raw,
            model.device,
            model.precision,
            model.dtype_reason,
            batcher.limits.max_batch_size,
            batcher.workers,
        )


def _start(
    spec: ModelSpec, s: Settings, metrics: Metrics, threads: int, tracing: Tracing
) -> tuple[ClipModel, ModelBatcher]:
    """One model loaded, compiled and warmed, and its batcher started."""
    model = load_model(
        spec, device=s.device, dtype=s.dtype, cache_dir=s.cache_dir, offline=s.offline
    )
    batch = s.batch_size_for(model.device.type)
    workers = s.workers_for(model.device.type)
    if s.compile != "off" and workers > 1:
        # a compiled module recompiles on unseen shapes, and compiling is not safe
        # from two threads at once
        raise ModelLoadError(f"--compile {s.compile} needs --compute-workers 1")
    model.compile(s.compile)
    _warm_up(model, batch)
    metrics.model_info.labels(
        spec.raw, spec.arch, spec.shown_tag or "", str(model.device), model.precision
    ).set(1)
    batcher = ModelBatcher(
        spec.raw,
        _encoders(model),
        max_batch_size=batch,
        max_wait_s=s.wait_ms_for(model.device.type) / 1000,
        max_queue=s.max_queue,
        metrics=metrics,
        workers=workers,
        threads=threads,
        fail_after=s.device_failures,
        tracing=tracing,
    )
    batcher.start()
    return model, batcher


def _encoders(model: ClipModel) -> dict[str, Callable[[list[Any]], list[Row]]]:
    def text(texts: list[str]) -> list[Row]:
        tokens = model.tokenize(texts)  # once, here: its counts are /v1/embeddings' usage
        counts = model.token_counts(tokens)
        return [Row(v, n) for v, n in zip(model.encode_text(tokens), counts, strict=True)]

    def image(pixels: list[torch.Tensor]) -> list[Row]:
        return [Row(v, 0) for v in model.encode_image(torch.stack(pixels))]

    return {TEXT: text, IMAGE: image}


def _warm_up(model: ClipModel, batch: int) -> None:
    """Passes per modality before ready: at full batch on GPU, to settle kernels and memory;
    compiled, also at batch 1 and 2 (torch compiles batch 1 apart, and 2+ as one graph)."""
    sizes = {batch if model.device.type == "cuda" else 1}
    if model.compiled != "off":
        sizes |= {1, 2}
    for n in sorted(sizes):
        model.encode_text(model.tokenize(["warm up"] * (n - 1) + ["a longer warm-up caption"]))
        g = model.preprocessing.geometry
        model.encode_image(torch.zeros(n, 3, g.height, g.width, dtype=torch.uint8))
