"""GPU benchmark: served and raw images/s and texts/s for ViT-B-32 and ViT-L-14, and the share
of the GPU's FLOP limit each reaches. Run through run.sh (it installs clipserve first).

Random weights compute exactly what trained ones do, so nothing is downloaded. FLOPs per item are
open_clip's profile (docs/model_profile.csv); the text figure is for the full 77-token context, so
the ratio for text uses the untrimmed (77-token) encoder, and the trimmed one is shown beside it.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

from clipserve.bench.config import BenchConfig
from clipserve.bench.run import run_bench

# GFLOPs per item, from open_clip's model profile: (image, text at 77 tokens).
GFLOPS = {"ViT-B-32": (8.82, 5.96), "ViT-L-14": (162.03, 13.3)}
H100_DENSE_BF16_TFLOPS = 990.0


def flop_limit(gflops: float, peak_tflops: float) -> float:
    """Items/s a GPU would reach doing nothing but this model's FLOPs at its peak."""
    return peak_tflops * 1e12 / (gflops * 1e9)


def bench_model(arch: str, args: argparse.Namespace) -> dict:
    """Served single-item and batched requests, plus the raw ceiling, for one architecture."""
    runs = {}
    for items, conc in ((1, args.single_concurrency), (args.batch_items, args.batch_concurrency)):
        cfg = BenchConfig(
            spawn=True,
            model=f"{arch}:random",
            workloads=("text", "jpeg224"),
            concurrency=conc,
            requests=args.requests,
            items=items,
            ceiling=items == 1,  # once per model is enough
            batch_sizes=args.batch_sizes,
            ceiling_min_s=args.ceiling_min_s,
            server_args=tuple(args.server_arg),
        )
        runs[f"items{items}"] = run_bench(cfg)
        print(f"{arch}: {items}-item requests done", file=sys.stderr)
    return runs


def table(results: dict, peak_tflops: float) -> str:
    """A markdown table: raw vs served items/s and the share of the FLOP limit."""
    rows = [
        "| model | modality | FLOP limit /s | raw /s (batch) | raw / limit | served /s "
        "(items per request, concurrency) | served / raw |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for arch, runs in results.items():
        ceiling = runs["items1"]["ceiling"]
        for modality, workload, key, gf in (
            ("image", "jpeg224", "image", GFLOPS[arch][0]),
            ("text (77 tok)", "text", "text_77", GFLOPS[arch][1]),
            ("text (trimmed)", "text", "text", None),
        ):
            c = ceiling[key]
            limit = flop_limit(gf, peak_tflops) if gf else None
            served = [
                r for run in runs.values() for r in run["results"] if r["workload"] == workload
            ]
            best = max(served, key=lambda r: r["items_per_s"])
            raw = c["items_per_s"]
            # the service trims text, so served text is compared with the trimmed encoder only
            shown = (
                f"{best['items_per_s']:,.0f} ({best['items_per_request']}, "
                f"{best['concurrency']}) | {best['items_per_s'] / raw:.2f}"
                if key != "text_77"
                else "- | -"
            )
            rows.append(
                f"| {arch} | {modality} | {f'{limit:,.0f}' if limit else '-'} | "
                f"{raw:,.0f} ({c['best_batch']}) | {f'{raw / limit:.0%}' if limit else '-'} | "
                f"{shown} |"
            )
    return "\n".join(rows)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", default="ViT-B-32,ViT-L-14")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument(
        "--single-concurrency", type=lambda s: tuple(map(int, s.split(","))), default=(64, 256)
    )
    p.add_argument("--batch-items", type=int, default=32)
    p.add_argument(
        "--batch-concurrency", type=lambda s: tuple(map(int, s.split(","))), default=(8, 32)
    )
    p.add_argument(
        "--batch-sizes",
        type=lambda s: tuple(map(int, s.split(","))),
        default=(1, 32, 64, 128, 256, 512),
    )
    p.add_argument("--ceiling-min-s", type=float, default=2.0)
    p.add_argument(
        "--peak-tflops",
        type=float,
        default=H100_DENSE_BF16_TFLOPS,
        help="the GPU's dense fp16/bf16 peak (default: H100 SXM, 990)",
    )
    p.add_argument(
        "--server-arg",
        action="append",
        default=[],
        help="extra `clipserve serve` argument (repeat)",
    )
    p.add_argument("--out", type=Path, default=Path("gpu-bench-results"))
    args = p.parse_args()

    import torch

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (CPU run)"
    results = {arch: bench_model(arch, args) for arch in args.models.split(",")}
    args.out.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    md = (
        f"GPU: {gpu}; torch {torch.__version__}; Python {platform.python_version()}; "
        f"FLOP limit at {args.peak_tflops:g} TFLOP/s\n\n{table(results, args.peak_tflops)}\n"
    )
    (args.out / f"gpu-bench-{stamp}.json").write_text(
        json.dumps({"gpu": gpu, "peak_tflops": args.peak_tflops, "results": results}, indent=2)
    )
    (args.out / f"gpu-bench-{stamp}.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
