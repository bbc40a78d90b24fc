"""`clipserve bench --zero-shot`: /classify with the embedding cache on, then off, in one run.

Zero-shot classification embeds every label in every template, and the same label set comes
with every request; with the cache, the requests after the first compute only their image.
Each server is spawned in turn (neither shares the CPUs with the other) and gets the same
single-image requests, one at a time; the ratio is of their total times. Labels are ImageNet's
class names and templates open_clip's ImageNet ensemble, as a real zero-shot classifier uses.
"""

from __future__ import annotations

import base64
import json
import sys
import time
from typing import Any

import httpx

from clipserve.bench.config import BenchConfig, ZeroShot
from clipserve.bench.loadgen import percentile
from clipserve.bench.scrape import MetricsPage
from clipserve.bench.server import start_server
from clipserve.bench.workloads import photo_bytes


def bodies(shape: ZeroShot) -> list[bytes]:
    """One /classify body per request: the same labels and templates, a different photo."""
    from clipserve.models import imagenet_classnames, imagenet_templates

    names = list(dict.fromkeys(imagenet_classnames()))[: shape.labels]  # 998 distinct
    templates = list(imagenet_templates()[: shape.templates])
    photos = [photo_bytes("JPEG", (224, 224), seed=i) for i in range(shape.requests)]
    return [
        json.dumps(
            {
                "images": [{"img_blob": base64.b64encode(photo).decode()}],
                "labels": names,
                "templates": templates,
            }
        ).encode()
        for photo in photos
    ]


def run_zero_shot(cfg: BenchConfig, shape: ZeroShot) -> dict[str, Any]:
    """Both runs (or, without --spawn, the one server at cfg.url) and their ratio."""
    requests = bodies(shape)
    headers = {"content-type": "application/json"}
    if cfg.api_key:
        headers["authorization"] = f"Bearer {cfg.api_key}"
    runs = []
    for cache in ("on", "off") if cfg.spawn else ("as served",):
        extra = ["--model-config-dir", cfg.model_config_dir] if cfg.model_config_dir else []
        no_cache = ["--cache-mb", "0"] if cache == "off" else []
        server = (
            start_server(cfg.model, *extra, *cfg.server_args, *no_cache, log=cfg.log)
            if cfg.spawn
            else None
        )
        url = server.url if server else cfg.url.rstrip("/")
        try:
            runs.append({"cache": cache, **_one_run(url, headers, requests, cache)})
        finally:
            if server:
                server.stop()
    result: dict[str, Any] = {"scenario": "zero-shot", **shape.__dict__, "runs": runs}
    if len(runs) == 2:
        with_cache, without = runs
        result["ratio_total"] = round(without["total_s"] / with_cache["total_s"], 2)
        result["ratio_after_first_p50"] = round(
            without["rest_p50_ms"] / with_cache["rest_p50_ms"], 2
        )
        if not with_cache["random_weights"]:  # two random inits disagree by design
            result["same_top_labels"] = with_cache["top_labels"] == without["top_labels"]
    return result


def _one_run(
    url: str, headers: dict[str, str], requests: list[bytes], cache: str
) -> dict[str, Any]:
    ms: list[float] = []
    top: list[str] = []
    with httpx.Client(base_url=url, headers=headers, timeout=3600) as client:
        model = client.get("/models").raise_for_status().json()
        for body in requests:
            start = time.perf_counter()
            r = client.post("/classify", content=body).raise_for_status()
            ms.append((time.perf_counter() - start) * 1000)
            top.append(r.json()["predictions"][0][0]["label"])
            print(f"  cache {cache:8} request {len(ms):3}  {ms[-1]:9.1f} ms", file=sys.stderr)
        hits = MetricsPage.get(url, headers).value("clipserve_cache_hits_total")
    rest = ms[1:] or ms
    return {
        "model": model["models"][0]["spec"],
        "random_weights": model["models"][0]["random_weights"],
        "cache_mb": model["cache"]["max_mb"],
        "first_ms": round(ms[0], 1),
        "rest_p50_ms": round(percentile(rest, 50), 1),
        "rest_mean_ms": round(sum(rest) / len(rest), 1),
        "total_s": round(sum(ms) / 1000, 2),
        "cache_hits": hits,
        "top_labels": top,
    }


def format_zero_shot(result: dict[str, Any]) -> str:
    """The scenario as a small table and its ratio."""
    lines = [
        f"zero-shot: {result['labels']} labels x {result['templates']} templates, "
        f"{result['requests']} single-image /classify requests, one at a time",
        f"{'cache':10}{'first ms':>10}{'rest p50':>10}{'rest mean':>11}{'total s':>9}{'hits':>8}",
    ]
    for r in result["runs"]:
        lines.append(
            f"{r['cache']:10}{r['first_ms']:>10.1f}{r['rest_p50_ms']:>10.1f}"
            f"{r['rest_mean_ms']:>11.1f}{r['total_s']:>9.2f}{r['cache_hits']:>8.0f}"
        )
    if "ratio_total" in result:
        same = result.get("same_top_labels")
        lines.append(
            f"cache off / on: {result['ratio_total']}x in total, "
            f"{result['ratio_after_first_p50']}x per request after the first (p50)"
            + ("" if same is None else f"; same top labels: {same}")
        )
    return "\n".join(lines)
