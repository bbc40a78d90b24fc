"""Compare models' bare forward-pass throughput on this machine, in the same minutes.

Usage: .venv/bin/python scripts/bench-models.py [SPEC ...]
(default: ViT-B-32:random MobileCLIP2-S0:random). Each model is loaded once (clipserve's
BareModel, as `clipserve bench` times its ceiling); then rounds run the models in turn (A B A B),
each timing text (trimmed as served), text_77 (the full context) and image at batch 8, with as
many single-threaded passes at once as there are CPUs, as the service runs on CPU. Prints every
round and, per workload, the median sustained items/s of each model and its ratio to the first.
"""

from __future__ import annotations

import os
import statistics
import sys
import time

from clipserve.bench.ceiling import BareModel
from clipserve.settings import available_cpus

WORKLOADS = ("text", "text_77", "image")
BATCH, ROUNDS, MIN_S = 8, 3, 1.5


def main(specs: list[str]) -> None:
    models = {s: BareModel(s, max_batch=BATCH) for s in specs}
    passes = available_cpus()
    rates: dict[tuple[str, str], list[float]] = {(s, w): [] for s in specs for w in WORKLOADS}
    for r in range(ROUNDS):
        for s in specs:
            for w in WORKLOADS:
                _, sustained = models[s].rates(w, BATCH, passes, min_s=MIN_S, reps=2)
                rates[(s, w)].append(sustained)
                load = os.getloadavg()[0]
                print(f"round {r} {time.strftime('%T')} load {load:.1f} {s} {w}: {sustained:.1f}/s")
    for w in WORKLOADS:
        medians = [statistics.median(rates[(s, w)]) for s in specs]
        cells = "  ".join(
            f"{s} {m:.1f}/s (x{m / medians[0]:.2f})" for s, m in zip(specs, medians, strict=True)
        )
        print(f"{w:8} {cells}")


if __name__ == "__main__":
    main(sys.argv[1:] or ["ViT-B-32:random", "MobileCLIP2-S0:random"])
