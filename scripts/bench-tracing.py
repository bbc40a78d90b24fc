"""What tracing costs: requests/s of one server with tracing off, on (always_on) and sampled
(parentbased_traceidratio 0.1), from one run on this machine.

Usage: .venv/bin/python scripts/bench-tracing.py [--requests N] [--concurrency C] [--rounds R]

Three `clipserve serve` processes of the tiny test model (its forward pass is cheap, so the
per-request cost of tracing shows at its largest; the cache off, so every item is computed)
export to one real OpenTelemetry Collector (scripts/build-otelcol.sh). Rounds run the three in
turn (off on sampled, off on sampled, ...) with clipserve's own load generator, so each sees
the same moments of a machine whose speed drifts, after a round unrecorded; the table has each
one's median round, the server's CPU per request, and the spans the collector received.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the collector harness in tests/

from clipserve.bench.loadgen import LoadResult, run_load
from clipserve.bench.workloads import request_bodies
from clipserve.tracing import OFF

from tests.support.collector import Collector
from tests.support.server import Server, start_server

MODES = {
    "off": None,
    "on": {"OTEL_TRACES_SAMPLER": "always_on"},
    "sampled": {
        "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
        "OTEL_TRACES_SAMPLER_ARG": "0.1",
    },
}
WORKLOADS = ("text", "jpeg224")  # an image request has fetch-free decode and compute spans too


def measure(server: Server, workload: str, args: argparse.Namespace) -> LoadResult:
    bodies = request_bodies(workload, 1)
    return asyncio.run(
        run_load(
            server.url,
            bodies,
            concurrency=args.concurrency,
            requests=args.requests,
            workload=workload,
            cpu_of=server.cpu_seconds,
        )
    )


def off_hooks_us(calls: int = 200_000) -> float:
    """Microseconds the hooks cost a one-image request with tracing off (no middleware then):
    two captures (decode, queue), the decode span and its batch's span (a whole batch, at most)."""
    start = time.perf_counter()
    for _ in range(calls):
        OFF.capture()
        OFF.capture()
        with OFF.span("decode", parent=None):
            pass
        with OFF.batch("batch", (), {}):
            pass
    return (time.perf_counter() - start) / calls * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=800, help="per round (default 800)")
    parser.add_argument("--concurrency", type=int, default=8, help="default 8")
    parser.add_argument("--rounds", type=int, default=5, help="default 5")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp, Collector(Path(tmp)) as collector:
        servers: dict[str, Server] = {}
        try:
            for mode, otel in MODES.items():
                env = collector.env(OTEL_SERVICE_NAME=f"bench-{mode}", **otel) if otel else {}
                servers[mode] = start_server("--cache-mb", "0", env=env)
            for workload in WORKLOADS:  # a round unrecorded: each batcher learns its cohort
                for server in servers.values():
                    measure(server, workload, args)
            runs: dict[tuple[str, str], list[LoadResult]] = {}
            for r in range(args.rounds):
                for workload in WORKLOADS:
                    for mode, server in servers.items():
                        result = measure(server, workload, args)
                        runs.setdefault((workload, mode), []).append(result)
                        rate = result.requests / result.seconds
                        print(
                            f"round {r} {workload:8} {mode:8} {rate:7.1f} req/s"
                            f"  errors {result.errors}",
                            flush=True,
                        )
        finally:
            for server in servers.values():
                server.stop()
        spans = collector.spans()  # after the servers' clean stop: all flushed
    sent = (args.rounds + 1) * args.requests  # per (workload, mode), + the load's warm-ups
    print(
        f"\n{args.rounds} rounds x {args.requests} requests of 1 item, concurrency "
        f"{args.concurrency}, Tiny-ViT-T:random on CPU, cache off (median round)\n"
    )
    print("| workload | tracing | requests/s | vs off | p50 ms | p95 ms | server CPU ms/request |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for workload in WORKLOADS:
        base = statistics.median(x.requests / x.seconds for x in runs[(workload, "off")])
        for mode in MODES:
            results = runs[(workload, mode)]
            rate = statistics.median(x.requests / x.seconds for x in results)
            p50 = statistics.median(x.p50_ms for x in results)
            p95 = statistics.median(x.p95_ms for x in results)
            cpu = statistics.median((x.server_cpu_s or 0) * 1000 / x.requests for x in results)
            print(
                f"| {workload} | {mode} | {rate:.1f} | {rate / base:.2f} | {p50:.1f} | {p95:.1f}"
                f" | {cpu:.2f} |"
            )
    hooks = off_hooks_us()
    off_cpu = statistics.median(
        (x.server_cpu_s or 0) * 1000 / x.requests for x in runs[("jpeg224", "off")]
    )
    print(
        f"\noff: the hooks cost {hooks:.2f} us per image request, "
        f"{hooks / 10 / off_cpu:.3f}% of the server's CPU per request"
    )
    for mode in MODES:
        traces = {s.trace_id for s in spans if s.resource.get("service.name") == f"bench-{mode}"}
        mine = sum(s.resource.get("service.name") == f"bench-{mode}" for s in spans)
        print(f"{mode}: {len(traces)} traces ({mine} spans) exported for ~{2 * sent} requests")


if __name__ == "__main__":
    main()
