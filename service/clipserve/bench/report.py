"""`clipserve bench` output: a plain-text report and a PNG (matplotlib, the `[bench]` extra)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from clipserve.bench.ceiling import ceiling_for


def format_report(result: dict[str, Any]) -> str:
    """The result as a few aligned tables."""
    m = result["model"]
    lines = [
        f"model {m['spec']} on {m['device']} ({m['dtype']}), max batch "
        f"{m['batching']['max_batch_size']}, max wait {m['batching']['max_wait_ms']} ms, "
        f"{m['batching']['compute_workers']} compute workers, embedding cache "
        f"{'on' if result['cache']['enabled'] else 'off'}; "
        f"{result['machine']['cpus']} CPUs, load average at end "
        f"{result['machine']['loadavg_at_end'][0]:.2f}"
    ]
    c = result["ceiling"]
    if c:
        lines += [
            "",
            "raw model ceiling (no HTTP, no decode; best of passes x threads "
            f"{' and '.join(c['layouts'])}):",
        ]
        for name in ("text", "text_77", "image"):
            x = c[name]
            lines.append(
                f"  {name:8} {x['items_per_s']:9.1f} items/s at batch {x['best_batch']:<3}"
                f" ({x['best_layout']}), sustained {x['sustained_items_per_s']:.1f} "
                f"at batch {x['sustained_best_batch']};  batch-1 forward "
                f"{x['batch1_ms']} ms"
            )
        lines.append(
            f"  model RSS (loaded in the bench process) {c['model_rss_bytes'] / 2**20:.0f} MiB"
        )
    lines += [
        "",
        "ratio: served items/s over the peak ceiling; sust: over the sustained one; "
        "now: over the sustained bare rate measured right after the row",
        f"{'workload':10}{'conc':>5}{'items/s':>10}{'ratio':>7}{'sust':>6}{'now':>6}"
        f"{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'errors':>7}{'srv cpu':>8}{'cli cpu':>8}"
        "  batch",
    ]
    for r in result["results"]:
        ratio, sust, now = (
            f"{r[k]:.2f}" if r[k] is not None else "-"
            for k in ("ratio", "ratio_sustained", "ratio_now")
        )
        srv = f"{r['server_cpu_s']:.1f}" if r["server_cpu_s"] is not None else "-"
        lines.append(
            f"{r['workload']:10}{r['concurrency']:>5}{r['items_per_s']:>10.1f}"
            f"{ratio:>7}{sust:>6}{now:>6}{r['p50_ms']:>9.1f}{r['p95_ms']:>9.1f}"
            f"{r['p99_ms']:>9.1f}"
            f"{r['errors']:>7}{srv:>8}{r['client_cpu_s']:>8.1f}  "
            + "/".join(f"{v:g}" for v in (r.get("mean_batch") or {}).values())
        )
        lines += [f"    error: {e}" for e in r["error_samples"]]
    for row in result["c1_vs_batch1"]:
        lines.append(
            f"c=1 {row['workload']}: p50 {row['p50_ms']} ms vs {row['forward_batch1_ms']}"
            f" ms for a bare batch-1 forward between its requests (p50): "
            f"{row['overhead_ms']:+} ms"
        )
    mem = result["memory"]
    if mem:
        lines.append(
            "server RSS: "
            + ", ".join(
                f"{k} {v['rss_bytes'] / 2**20:.0f} MiB (peak {v['peak_rss_bytes'] / 2**20:.0f})"
                for k, v in mem.items()
                if k != "gpu_allocated_bytes"
            )
        )
        for device, n in (mem.get("gpu_allocated_bytes") or {}).items():
            lines.append(f"server GPU memory allocated on {device}: {n / 2**20:.0f} MiB")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    """Throughput (with the ceilings dashed) and p50/p99 latency against concurrency."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    workloads = list(dict.fromkeys(r["workload"] for r in result["results"]))
    for i, w in enumerate(workloads):
        rows = sorted(
            (r for r in result["results"] if r["workload"] == w), key=lambda r: r["concurrency"]
        )
        conc = [r["concurrency"] for r in rows]
        colour = f"C{i}"
        left.plot(conc, [r["items_per_s"] for r in rows], "o-", color=colour, label=w)
        if result["ceiling"]:
            left.axhline(ceiling_for(w, result["ceiling"]), color=colour, ls="--", lw=1)
        right.plot(conc, [r["p50_ms"] for r in rows], "o-", color=colour, label=f"{w} p50")
        right.plot(conc, [r["p99_ms"] for r in rows], "x:", color=colour, label=f"{w} p99")
    left.set(
        xscale="log",
        xlabel="concurrency",
        ylabel="items/s",
        title="throughput (dashed: raw model ceiling)",
    )
    right.set(
        xscale="log", yscale="log", xlabel="concurrency", ylabel="latency (ms)", title="latency"
    )
    for ax in (left, right):
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(f"clipserve bench: {result['model']['spec']} on {result['model']['device']}")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
