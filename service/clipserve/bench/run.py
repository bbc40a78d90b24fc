"""One `clipserve bench` run: serve (or reach) a model, load it, measure its ceiling beside it."""

from __future__ import annotations

import asyncio
import os
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from typing import Any

import httpx

from clipserve.bench.ceiling import BareModel, ceiling_for, measure_ceiling
from clipserve.bench.config import BenchConfig
from clipserve.bench.loadgen import LoadResult, percentile, run_load
from clipserve.bench.scrape import MetricsPage
from clipserve.bench.server import start_server
from clipserve.bench.workloads import WORKLOADS, request_bodies


def _probe_peak(url: str, headers: dict[str, str], batching: dict[str, Any]) -> None:
    """One request per modality with a max-size batch for every compute worker (they share
    its items evenly and run at once), so the peak RSS includes the worst case a pod's memory
    limit must hold."""
    items = batching["max_batch_size"] * batching["compute_workers"]
    for workload in ("text", "jpeg224"):
        body = request_bodies(workload, items, count=1)[0]
        r = httpx.post(
            url + "/encode",
            content=body,
            timeout=300,
            headers={"content-type": "application/json", **headers},
        )
        r.raise_for_status()


def batch_totals(url: str, headers: dict[str, str]) -> dict[str, tuple[float, float]]:
    """modality -> (forward passes, items) so far, summed over models, from /metrics."""
    page = MetricsPage.get(url, headers)
    passes = page.by("modality", "clipserve_batch_size_count")
    items = page.by("modality", "clipserve_batch_size_sum")
    return {m: (n, items.get(m, 0.0)) for m, n in passes.items()}


def _mean_batch(
    before: dict[str, tuple[float, float]], after: dict[str, tuple[float, float]]
) -> dict[str, float]:
    out = {}
    for modality, (passes, items) in after.items():
        p0, i0 = before.get(modality, (0.0, 0.0))
        if passes > p0:
            out[modality] = round((items - i0) / (passes - p0), 2)
    return out


def run_bench(cfg: BenchConfig) -> dict[str, Any]:
    """Serve (or reach) a model, load it, measure its ceiling; everything as one JSON-able dict."""
    extra = ["--model-config-dir", cfg.model_config_dir] if cfg.model_config_dir else []
    # The bodies repeat (64 per workload): with the embedding cache on, the load would measure
    # cache hits, not the model. The cache has its own scenario (--zero-shot).
    if not any(a.startswith("--cache-mb") for a in cfg.server_args):
        extra += ["--cache-mb", "0"]
    spawned = start_server(cfg.model, *extra, *cfg.server_args, log=cfg.log) if cfg.spawn else None
    url = spawned.url if spawned else cfg.url.rstrip("/")
    headers = {"authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
    try:
        served = httpx.get(url + "/models", headers=headers, timeout=30).raise_for_status().json()
        info = next(m for m in served["models"] if m["default"])
        if served["cache"]["enabled"]:
            print(
                "warning: the server's embedding cache is on; repeated bodies are answered "
                "from it (start the server with --cache-mb 0 to measure the model path)",
                file=sys.stderr,
            )
        memory: dict[str, Any] = {}
        if spawned:
            memory["ready"] = spawned.memory()
            _probe_peak(url, headers, info["batching"])
            memory["after_max_batch"] = spawned.memory()
            memory["gpu_allocated_bytes"] = MetricsPage.get(url, headers).by(
                "device", "clipserve_gpu_memory_allocated_bytes"
            )
        bare = (
            BareModel(
                info["spec"],
                device=info["device"],
                dtype=info["dtype"],
                compile=info["compiled"],
                model_config_dir=cfg.model_config_dir,
                max_batch=max(cfg.batch_sizes),
            )
            if cfg.ceiling
            else None
        )
        ceiling = (
            measure_ceiling(
                info["spec"], batch_sizes=cfg.batch_sizes, min_s=cfg.ceiling_min_s, bare=bare
            )
            if bare
            else None
        )
        results = []
        beside: dict[str, list[float]] = {}  # workload -> bare batch-1 passes beside c=1, ms
        for workload in cfg.workloads:
            bodies = request_bodies(workload, cfg.items)
            modality = WORKLOADS[workload][0]
            for c in cfg.concurrency:
                between = None
                if bare and c == 1 and cfg.items == 1 and modality != "mixed":
                    between = _timed(bare.forward(modality, 1), beside.setdefault(workload, []))
                before = batch_totals(url, headers)
                res = asyncio.run(
                    run_load(
                        url,
                        bodies,
                        concurrency=c,
                        requests=cfg.requests,
                        workload=workload,
                        items_per_request=cfg.items,
                        headers=headers,
                        client=cfg.client,
                        cpu_of=spawned.cpu_seconds if spawned else None,
                        between=between,
                    )
                )
                # (includes the few warm-up requests: they share the same batches)
                res.mean_batch = _mean_batch(before, batch_totals(url, headers))
                if bare and ceiling:
                    res.ratio = round(res.items_per_s / ceiling_for(workload, ceiling), 3)
                    res.ratio_sustained = round(
                        res.items_per_s / ceiling_for(workload, ceiling, "sustained_items_per_s"), 3
                    )
                    res.bare_now_items_per_s = round(
                        _bare_now(bare, ceiling, workload, cfg.ceiling_min_s), 2
                    )
                    res.ratio_now = round(res.items_per_s / res.bare_now_items_per_s, 3)
                results.append(res)
                print(
                    f"  {workload:9} c={c:<3} {res.items_per_s:8.1f} items/s  "
                    f"p50 {res.p50_ms:7.1f} ms  errors {res.errors}",
                    file=sys.stderr,
                )
        if spawned:
            memory["end"] = spawned.memory()
    finally:
        if spawned:
            spawned.stop()
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"cpus": os.cpu_count(), "loadavg_at_end": os.getloadavg()},
        "url": "spawned" if spawned else url,
        "model": info,
        "cache": served["cache"],
        "ceiling": ceiling,
        "memory": memory or None,
        "results": [asdict(r) for r in results],
        "c1_vs_batch1": _c1_summary(results, ceiling, beside),
    }


def _bare_now(bare: BareModel, ceiling: dict[str, Any], workload: str, min_s: float) -> float:
    """The bare model's sustained items/s right after a load run, at the ceiling's best
    sustained batch size and layout (mixed: half and half): the same minute of a VM whose
    speed drifts by 10-20% over minutes, so served/now compares like with like."""

    def rate(modality: str) -> float:
        c = ceiling[modality]
        passes = ceiling["passes"][c["sustained_best_layout"]]
        return bare.rates(modality, c["sustained_best_batch"], passes, min_s=min_s, reps=2)[1]

    modality = WORKLOADS[workload][0]
    if modality == "mixed":
        return 1 / (0.5 / rate("text") + 0.5 / rate("image"))
    return rate(modality)


# After a parallel region libgomp's idle threads spin for ~3 ms before they sleep (measured
# here: 2.9-3.5 ms of CPU). A bare pass right after a request would share the CPUs with the
# server's spinning team, and the next request with ours; waiting this long on both sides
# keeps each measurement to itself.
_SETTLE_S = 0.01


def _timed(fn: Callable[[], None], into: list[float]) -> Callable[[], None]:
    """fn on a settled machine, appending each call's milliseconds to `into`."""

    def timed() -> None:
        time.sleep(_SETTLE_S)
        start = time.perf_counter()
        fn()
        into.append((time.perf_counter() - start) * 1000)
        time.sleep(_SETTLE_S)

    return timed


def _c1_summary(
    results: list[LoadResult], ceiling: dict[str, Any] | None, beside: dict[str, list[float]]
) -> list[dict]:
    """Concurrency-1 p50 against the p50 of bare batch-1 passes (every thread) timed between
    its requests: the latency the service adds, both measured at the same moments. The
    ceiling's fastest batch-1 pass, minutes apart on a machine whose speed drifts, is kept
    for reference."""
    out = []
    for r in results:
        if r.concurrency != 1 or r.workload not in beside or not ceiling:
            continue
        bare = round(percentile(beside[r.workload], 50), 2)
        out.append(
            {
                "workload": r.workload,
                "p50_ms": r.p50_ms,
                "forward_batch1_ms": bare,
                "overhead_ms": round(r.p50_ms - bare, 2),
                "passes": len(beside[r.workload]),
                "fastest_batch1_ms": ceiling[WORKLOADS[r.workload][0]]["batch1_ms"],
            }
        )
    return out
