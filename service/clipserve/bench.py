"""`clipserve bench`: a bounded async load generator, and the raw model's ceiling in the same run.

The served numbers (items/s, latency percentiles, errors) come from real HTTP requests against a
running server (loopback by default, or one this command spawns). The ceiling is the best items/s
of the model's forward pass alone (no HTTP, no decode) over a range of batch sizes, measured in
this process with the same spec, device, dtype and compile mode: its peak (the fastest pass)
and its sustained rate (passes back to back); served/ceiling is the share of the model's speed
the service delivers, against each. Importable: `measure_ceiling`, `run_bench` (and
`clipserve.loadgen.run_load`).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import httpx

from clipserve.loadgen import (
    WORKLOADS,
    LoadResult,
    captions,
    percentile,
    request_bodies,
    run_load,
)

# -- the raw model -------------------------------------------------------------------------------


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


# -- a server to measure -------------------------------------------------------------------------


@dataclass
class Spawned:
    """A `clipserve serve` child process."""

    proc: subprocess.Popen[bytes]
    url: str

    def cpu_seconds(self) -> float:
        """User + system CPU time of the server so far."""
        with open(f"/proc/{self.proc.pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def memory(self) -> dict[str, int]:
        """Current and peak resident memory of the server, in bytes."""
        status = Path(f"/proc/{self.proc.pid}/status").read_text()
        kb = {
            k: int(v.split()[0]) * 1024
            for k, v in (line.split(":", 1) for line in status.splitlines())
            if k in ("VmRSS", "VmHWM")
        }
        return {"rss_bytes": kb["VmRSS"], "peak_rss_bytes": kb["VmHWM"]}

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def spawn_server(
    model: str, args: Sequence[str] = (), *, timeout: float = 300, log: Path | None = None
) -> Spawned:
    """Start `clipserve serve` on a free loopback port and wait until /readyz says 200."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [
        sys.executable,
        "-m",
        "clipserve.cli",
        "serve",
        "--model",
        model,
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--drain-grace-s",
        "0",
        *args,
    ]
    out = log.open("wb") if log else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    server = Spawned(proc, f"http://127.0.0.1:{port}")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(
                f"clipserve serve exited with {proc.returncode}" + (f"; see {log}" if log else "")
            )
        try:
            if httpx.get(server.url + "/readyz", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    server.stop()
    raise RuntimeError(f"clipserve serve not ready after {timeout}s")


# -- the whole run -------------------------------------------------------------------------------


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


def _gpu_bytes(url: str, headers: dict[str, str]) -> dict[str, float]:
    """The server's own report of GPU memory allocated, per device (empty on CPU)."""
    text = httpx.get(url + "/metrics", headers=headers, timeout=30).text
    return {
        m[1]: float(m[2])
        for m in re.finditer(
            r'^clipserve_gpu_memory_allocated_bytes\{device="([^"]*)"\} (\S+)', text, re.M
        )
    }


def batch_totals(url: str, headers: dict[str, str]) -> dict[str, tuple[float, float]]:
    """modality -> (forward passes, items) so far, summed over models, from /metrics."""
    text = httpx.get(url + "/metrics", headers=headers, timeout=30).text
    totals: dict[str, list[float]] = {}
    for m in re.finditer(r"^clipserve_batch_size_(count|sum)\{([^}]*)\} (\S+)", text, re.M):
        modality = re.search(r'modality="([^"]*)"', m[2])
        if modality:
            pair = totals.setdefault(modality[1], [0.0, 0.0])
            pair[m[1] == "sum"] += float(m[3])
    return {k: (v[0], v[1]) for k, v in totals.items()}


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
    spawned = (
        spawn_server(cfg.model, [*extra, *cfg.server_args], log=cfg.log) if cfg.spawn else None
    )
    url = spawned.url if spawned else cfg.url.rstrip("/")
    headers = {"authorization": f"Bearer {cfg.api_key}"} if cfg.api_key else {}
    try:
        info = next(
            m
            for m in httpx.get(url + "/models", headers=headers, timeout=30)
            .raise_for_status()
            .json()["models"]
            if m["default"]
        )
        memory: dict[str, Any] = {}
        if spawned:
            memory["ready"] = spawned.memory()
            _probe_peak(url, headers, info["batching"])
            memory["after_max_batch"] = spawned.memory()
            memory["gpu_allocated_bytes"] = _gpu_bytes(url, headers)
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


# -- command line --------------------------------------------------------------------------------


def _ints(raw: str) -> tuple[int, ...]:
    return tuple(int(x) for x in raw.split(",") if x.strip())


def _names(raw: str) -> tuple[str, ...]:
    names = tuple(x.strip() for x in raw.split(",") if x.strip())
    unknown = [n for n in names if n not in WORKLOADS]
    if unknown:
        raise argparse.ArgumentTypeError(
            f"unknown workload(s) {', '.join(unknown)}; choose from {', '.join(WORKLOADS)}"
        )
    return names


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register `clipserve bench` on the CLI's subparsers."""
    d = BenchConfig()
    about = __doc__.split("\n\n")[1].split(" Importable")[0].replace("\n", " ")
    p = sub.add_parser(
        "bench", help="load-test a server and compare with the raw model", description=about
    )
    p.add_argument("--url", default=d.url, help=f"server to load (default {d.url})")
    p.add_argument(
        "--spawn",
        action="store_true",
        help="start `clipserve serve --model MODEL` on a free port and load that",
    )
    p.add_argument("--model", default=d.model, help=f"model --spawn serves (default {d.model})")
    p.add_argument(
        "--server-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra argument for the spawned server (repeat: --server-arg=--max-wait-ms "
        "--server-arg=2)",
    )
    p.add_argument("--model-config-dir", help="extra open_clip configs (spawned server + ceiling)")
    p.add_argument(
        "--workload",
        type=_names,
        default=d.workloads,
        help=f"comma list of {', '.join(WORKLOADS)} (default {','.join(d.workloads)})",
    )
    p.add_argument(
        "--concurrency",
        type=_ints,
        default=d.concurrency,
        help="comma list of requests in flight (default 1,8,32)",
    )
    p.add_argument(
        "--requests",
        type=int,
        default=d.requests,
        help=f"requests per (workload, concurrency) (default {d.requests})",
    )
    p.add_argument("--items", type=int, default=d.items, help="items per request (default 1)")
    p.add_argument(
        "--no-ceiling",
        dest="ceiling",
        action="store_false",
        help="skip the raw-model measurement (e.g. for a remote server)",
    )
    p.add_argument(
        "--batch-sizes",
        type=_ints,
        default=d.batch_sizes,
        help="batch sizes tried for the ceiling (default 1,4,8,16,32,64)",
    )
    p.add_argument(
        "--ceiling-min-s",
        type=float,
        default=d.ceiling_min_s,
        help="least time spent timing each ceiling batch size (default 1.0)",
    )
    p.add_argument(
        "--api-key",
        default=os.environ.get("CLIPSERVE_API_KEY"),
        help="bearer key (default $CLIPSERVE_API_KEY)",
    )
    p.add_argument(
        "--client",
        choices=("raw", "httpx"),
        default=d.client,
        help="HTTP client of the load generator: raw (asyncio streams, least CPU; "
        "http only) or httpx (default raw)",
    )
    p.add_argument("--json", type=Path, help="write the full result here")
    p.add_argument("--plot", type=Path, help="write a PNG of throughput and latency vs concurrency")
    p.add_argument("--server-log", type=Path, help="where the spawned server logs (default: none)")
    return p


def main(args: argparse.Namespace) -> int:
    """Run `clipserve bench` from parsed arguments."""
    from clipserve.bench_report import format_report, plot

    cfg = BenchConfig(
        url=args.url,
        spawn=args.spawn,
        model=args.model,
        server_args=tuple(args.server_arg),
        model_config_dir=args.model_config_dir,
        workloads=args.workload,
        concurrency=args.concurrency,
        requests=args.requests,
        items=args.items,
        ceiling=args.ceiling,
        batch_sizes=args.batch_sizes,
        ceiling_min_s=args.ceiling_min_s,
        api_key=args.api_key,
        log=args.server_log,
        client=args.client,
    )
    result = run_bench(cfg)
    print(format_report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.plot:
        plot(result, args.plot)
    return 1 if any(r["errors"] for r in result["results"]) else 0
