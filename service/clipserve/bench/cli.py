"""The flags of `clipserve bench` and its entry point (the bench itself loads only when run)."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

import clipserve.bench
from clipserve.bench.config import BenchConfig, ZeroShot
from clipserve.bench.workloads import WORKLOADS


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


def _zero_shot(raw: str) -> ZeroShot:
    try:
        return ZeroShot.parse(raw)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from exc


def add_parser(sub: Any) -> argparse.ArgumentParser:
    """Register `clipserve bench` on the CLI's subparsers."""
    d = BenchConfig()
    about = clipserve.bench.__doc__.split("\n\n")[1].replace("\n", " ")
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
    p.add_argument(
        "--zero-shot",
        nargs="?",
        const="200x10x20",
        type=_zero_shot,
        metavar="LxTxR",
        help="instead of the load test: zero-shot /classify, L labels x T templates, R "
        "single-image requests, cache on then off (with --spawn; default 200x10x20)",
    )
    p.add_argument("--json", type=Path, help="write the full result here")
    p.add_argument("--plot", type=Path, help="write a PNG of throughput and latency vs concurrency")
    p.add_argument(
        "--server-log", type=Path, help="where the spawned server logs (default: a temporary file)"
    )
    return p


def main(args: argparse.Namespace) -> int:
    """Run `clipserve bench` from parsed arguments."""
    from clipserve.bench.report import format_report, plot
    from clipserve.bench.run import run_bench

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
    if args.zero_shot:
        from clipserve.bench.zeroshot import format_zero_shot, run_zero_shot

        result = run_zero_shot(cfg, args.zero_shot)
        print(format_zero_shot(result))
        if args.json:
            args.json.write_text(json.dumps(result, indent=2) + "\n")
        return 0
    try:
        result = run_bench(cfg)
    except KeyboardInterrupt:
        # A load left running by hand (say, while watching a cluster scale) ends with Ctrl-C:
        # say so in one line, not a traceback. A cut run's numbers would mislead: none are shown.
        print("clipserve bench: interrupted; no results", file=sys.stderr)
        return 130
    print(format_report(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if args.plot:
        plot(result, args.plot)
    return 1 if any(r["errors"] for r in result["results"]) else 0
