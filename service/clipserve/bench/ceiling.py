"""The model's ceiling: its forward passes alone (no HTTP, no decode), in the bench's process.

The ceiling is the best items/s over a range of batch sizes, with the served spec, device,
dtype and compile mode: its peak (the fastest pass) and its sustained rate (passes back to
back). Served items/s over it is the share of the model's speed the service delivers.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from clipserve.bench.workloads import WORKLOADS, captions


def _rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _time_calls(fn: Callable[[], object], *, min_s: float, reps: int) -> tuple[float, float]:
    """Seconds per call, fastest and mean, over at least `reps` timed calls (after one
    warm-up) lasting at least `min_s` together. The fastest is the peak: other work on the
    machine only ever slows a call down, so it is the closest to what the model alone can do.
    The mean is the sustained rate of calls back to back, as a served run sustains them."""
    fn()
    times: list[float] = []
    while len(times) < reps or sum(times) < min_s:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times), sum(times) / len(times)


def _single_threaded() -> None:
    import torch

    torch.set_num_threads(1)


class BareModel:
    """The served spec loaded in this process: its forward passes alone (no HTTP, no decode),
    for the ceiling and for the bare pass timed beside each concurrency-1 request."""

    def __init__(
        self,
        spec: str,
        *,
        device: str = "auto",
        dtype: str = "auto",
        compile: str = "off",
        model_config_dir: str | None = None,
        max_batch: int = 64,
    ) -> None:
        import torch

        from clipserve.models import add_model_configs, load_model, parse_spec

        if model_config_dir:
            add_model_configs(model_config_dir)
        rss0 = _rss_bytes()
        self.model = model = load_model(parse_spec(spec), device=device, dtype=dtype)
        self.rss_bytes = _rss_bytes() - rss0
        self.gpu_bytes = (
            torch.cuda.memory_allocated(model.device) if model.device.type == "cuda" else 0
        )
        model.compile(compile)
        self.compiled = compile
        self._texts = captions(max_batch, seed=1)
        size = model.image_size
        self._pixels = torch.randint(
            0,
            256,
            (max_batch, 3, size, size),
            dtype=torch.uint8,
            generator=torch.Generator().manual_seed(0),
        )
        self._sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)

    def forward(self, name: str, batch: int) -> Callable[[], None]:
        """One pass of `text` (batch-trimmed, as served), `text_77` or `image` at `batch`."""
        m, texts, pixels = self.model, self._texts[:batch], self._pixels[:batch]
        trim = name == "text"

        def image() -> None:
            m.encode_image(pixels)
            self._sync()

        def text() -> None:
            # the service tokenizes in its compute thread too, so tokenizing counts here
            m.encode_text(m.tokenize(texts), trim=trim)
            self._sync()

        return image if name == "image" else text

    def rates(
        self, name: str, batch: int, passes: int, *, min_s: float, reps: int = 3
    ) -> tuple[float, float]:
        """(peak, sustained) items/s of `passes` single-threaded passes at once, timed as
        rounds (or, with passes=1, of one pass on every intra-op thread of this thread)."""
        fn = self.forward(name, batch)
        if passes == 1:
            fastest, mean = _time_calls(fn, min_s=min_s, reps=reps)
        else:
            with ThreadPoolExecutor(passes, initializer=_single_threaded) as pool:

                def round_of_passes() -> None:
                    for future in [pool.submit(fn) for _ in range(passes)]:
                        future.result()

                fastest, mean = _time_calls(round_of_passes, min_s=min_s, reps=reps)
        return passes * batch / fastest, passes * batch / mean


def measure_ceiling(
    spec: str,
    *,
    device: str = "auto",
    dtype: str = "auto",
    batch_sizes: Sequence[int] = (1, 4, 8, 16, 32, 64),
    min_s: float = 1.0,
    reps: int = 3,
    model_config_dir: str | None = None,
    workers: int | None = None,
    compile: str = "off",
    bare: BareModel | None = None,
) -> dict[str, Any]:
    """The model's forward pass alone: items/s per batch size and modality, best of them,
    batch-1 latency, text trimmed vs. the full 77-token context, and RSS of the loaded model.

    Two ways to use the machine are timed and the better one counts at each batch size: one
    pass at a time on every intra-op thread, and `workers` single-threaded passes at once (the
    service's CPU layout; default one per CPU on CPU, none on CUDA). A multi-pass "call" is a
    round of `workers` concurrent passes, so its fastest round is comparable to a fastest call.
    `compile` is the server's --compile mode (then one pass at a time, as the server runs).
    `bare` is the model already loaded with these settings, if there is one.
    """
    import torch

    from clipserve.settings import Settings

    bare = bare or BareModel(
        spec,
        device=device,
        dtype=dtype,
        compile=compile,
        model_config_dir=model_config_dir,
        max_batch=max(batch_sizes),
    )
    model, compile = bare.model, bare.compiled
    if workers is None or compile != "off":  # the server's rule: see Settings.workers_for
        workers = Settings(compile=compile).workers_for(model.device.type)
    threads = torch.get_num_threads()
    layouts = {f"1x{threads}": 1}
    if workers > 1:
        layouts[f"{workers}x1"] = workers
    out: dict[str, Any] = {
        "spec": spec,
        "device": str(model.device),
        "dtype": model.precision,
        "compiled": compile,
        "torch_threads": threads,
        "layouts": list(layouts),
        "passes": layouts,
        "model_rss_bytes": bare.rss_bytes,
    }
    for name in ("text", "text_77", "image"):
        per_layout: dict[str, dict[int, float]] = {}  # peak items/s
        sustained: dict[int, tuple[float, str]] = {}  # best over layouts, and which
        for layout, n in layouts.items():
            per_layout[layout] = {}
            for b in batch_sizes:
                peak, rate = bare.rates(name, b, n, min_s=min_s, reps=reps)
                per_layout[layout][b] = peak
                sustained[b] = max(sustained.get(b, (0.0, layout)), (rate, layout))
        per_batch = {b: max(v[b] for v in per_layout.values()) for b in batch_sizes}
        best = max(per_batch, key=per_batch.__getitem__)
        best_sustained = max(sustained, key=lambda b: sustained[b][0])
        alone = per_layout[f"1x{threads}"]
        out[name] = {
            "items_per_s": round(per_batch[best], 2),
            "best_batch": best,
            "best_layout": max(per_layout, key=lambda k: per_layout[k][best]),
            "sustained_items_per_s": round(sustained[best_sustained][0], 2),
            "sustained_best_batch": best_sustained,
            "sustained_best_layout": sustained[best_sustained][1],
            # latency of one pass on every thread: the fastest a lone request can be served
            "batch1_ms": round(1000 / alone[1], 2) if 1 in alone else None,
            "per_batch": {str(b): round(v, 2) for b, v in per_batch.items()},
            "sustained_per_batch": {str(b): round(v[0], 2) for b, v in sustained.items()},
            "per_layout": {
                k: {str(b): round(x, 2) for b, x in v.items()} for k, v in per_layout.items()
            },
        }
    if model.device.type == "cuda":
        out["gpu_model_bytes"] = bare.gpu_bytes
        out["gpu_peak_bytes"] = torch.cuda.max_memory_allocated(model.device)
    return out


def ceiling_for(workload: str, ceiling: dict[str, Any], key: str = "items_per_s") -> float:
    """Items/s the model alone reaches on the workload's modality (mixed: half and half);
    `key` "items_per_s" for the peak, "sustained_items_per_s" for the sustained rate."""
    modality = WORKLOADS[workload][0]
    if modality == "mixed":
        t, i = ceiling["text"][key], ceiling["image"][key]
        return 1 / (0.5 / t + 0.5 / i)
    return ceiling[modality][key]
