"""`clipserve bench` against real servers with the tiny model: output and behaviour, not speed."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from clipserve.bench.ceiling import measure_ceiling
from clipserve.bench.config import BenchConfig, ZeroShot
from clipserve.bench.loadgen import percentile, run_load
from clipserve.bench.run import _probe_peak, batch_totals, run_bench
from clipserve.bench.workloads import WORKLOADS, request_bodies
from clipserve.bench.zeroshot import bodies as zeroshot_bodies

from tests.support.server import MODEL_CONFIGS, TINY, Server, start_server

FAST = [
    "--requests",
    "12",
    "--concurrency",
    "1,4",
    "--batch-sizes",
    "1,2",
    "--ceiling-min-s",
    "0.02",
    "--model-config-dir",
    str(MODEL_CONFIGS),
]


@pytest.mark.slow
def test_bench_cli_spawns_a_server_and_writes_json_and_a_plot(tmp_path: Path):
    out, png = tmp_path / "bench.json", tmp_path / "bench.png"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "clipserve.cli",
            "bench",
            "--spawn",
            "--model",
            TINY,
            "--workload",
            "text,jpeg224,mixed",
            *FAST,
            "--json",
            str(out),
            "--plot",
            str(png),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["model"]["spec"] == TINY
    rows = {(r["workload"], r["concurrency"]): r for r in result["results"]}
    assert set(rows) == {(w, c) for w in ("text", "jpeg224", "mixed") for c in (1, 4)}
    for r in rows.values():
        assert r["errors"] == 0 and r["requests"] == 12
        assert r["items_per_s"] > 0 and r["ratio_sustained"] >= r["ratio"] > 0
        # the bare rate measured right after the row, and the ratio to it
        assert r["bare_now_items_per_s"] > 0
        assert r["ratio_now"] == pytest.approx(
            r["items_per_s"] / r["bare_now_items_per_s"], abs=0.002
        )
        assert r["p50_ms"] <= r["p95_ms"] <= r["p99_ms"]
        assert r["server_cpu_s"] is not None
        expected = {"text": {"text"}, "jpeg224": {"image"}, "mixed": {"text", "image"}}
        assert set(r["mean_batch"]) == expected[r["workload"]]
        assert all(1 <= b <= 16 for b in r["mean_batch"].values())
    ceiling = result["ceiling"]
    for name in ("text", "text_77", "image"):
        assert set(ceiling[name]["per_batch"]) == {"1", "2"}
        assert ceiling[name]["batch1_ms"] > 0
        assert set(ceiling[name]["per_layout"]) == set(ceiling["layouts"])
    assert {row["workload"] for row in result["c1_vs_batch1"]} == {"text", "jpeg224"}
    for row in result["c1_vs_batch1"]:  # one bare pass timed after each recorded request
        assert row["passes"] == 12 and row["forward_batch1_ms"] > 0
        assert row["overhead_ms"] == pytest.approx(
            row["p50_ms"] - row["forward_batch1_ms"], abs=0.02
        )
    mem = result["memory"]
    assert mem["after_max_batch"]["peak_rss_bytes"] >= mem["ready"]["rss_bytes"] > 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "items/s" in proc.stdout and "ratio" in proc.stdout


def test_the_ceiling_peak_and_sustained_are_the_better_of_two_layouts():
    c = measure_ceiling(
        TINY, batch_sizes=(1, 4), min_s=0.02, workers=2, model_config_dir=str(MODEL_CONFIGS)
    )
    threads = c["torch_threads"]
    assert c["layouts"] == [f"1x{threads}", "2x1"]
    assert c["passes"] == {f"1x{threads}": 1, "2x1": 2}
    for name in ("text", "text_77", "image"):
        x = c[name]
        layouts = x["per_layout"]
        for b in ("1", "4"):
            assert x["per_batch"][b] == max(layouts[k][b] for k in c["layouts"])
        assert x["items_per_s"] == x["per_batch"][str(x["best_batch"])]
        assert x["best_layout"] in c["layouts"]
        # sustained: the mean call, so never above the fastest; the best batch of its own
        for b in ("1", "4"):
            assert 0 < x["sustained_per_batch"][b] <= x["per_batch"][b]
        assert (
            x["sustained_items_per_s"]
            == max(x["sustained_per_batch"].values())
            == x["sustained_per_batch"][str(x["sustained_best_batch"])]
        )
        assert x["sustained_best_layout"] in c["layouts"]
        # the lone-request latency comes from one pass on every thread, not from the pair
        assert x["batch1_ms"] == pytest.approx(1000 / layouts[f"1x{threads}"]["1"], rel=0.01)


def test_bench_api_measures_a_running_server_without_a_ceiling(server: Server):
    result = run_bench(
        BenchConfig(
            url=server.url, workloads=("png224",), concurrency=(2,), requests=6, ceiling=False
        )
    )
    (row,) = result["results"]
    assert row["errors"] == 0 and row["ratio"] is None and row["server_cpu_s"] is None
    assert result["ceiling"] is None and result["memory"] is None


def test_failed_requests_are_counted_with_their_reason(server: Server):
    bodies = [b'[{"text": "ok", "img_blob": "also"}]']
    res = asyncio.run(run_load(server.url, bodies, concurrency=3, requests=5, warmup=0))
    assert res.errors == 5 and res.requests == 5 and res.items_per_s == 0
    assert any("HTTP 400" in e and "exactly one of" in e for e in res.error_samples)


def test_every_workload_builds_valid_encode_bodies():
    for name, (modality, _fmt, _size) in WORKLOADS.items():
        (body,) = request_bodies(name, items=2, count=1)
        items = json.loads(body)
        kinds = {next(iter(item)) for item in items}
        expected = {"text": {"text"}, "image": {"img_blob"}, "mixed": {"text", "img_blob"}}
        assert kinds == expected[modality], name


def test_percentile_interpolates_and_orders():
    assert percentile([3, 1, 2], 50) == 2
    assert percentile([0, 10], 95) == pytest.approx(9.5)
    assert percentile([5], 99) == 5


def test_the_memory_probe_runs_a_max_size_batch_on_every_worker_at_once():
    srv = start_server("--compute-workers", "2", "--max-batch-size", "4")
    try:
        batching = httpx.get(srv.url + "/models").json()["models"][0]["batching"]
        before = batch_totals(srv.url, {})
        _probe_peak(srv.url, {}, batching)
        after = batch_totals(srv.url, {})
    finally:
        srv.stop()
    for modality in ("text", "image"):  # 2 passes of 4 items each
        passes, items = (
            a - b for a, b in zip(after[modality], before.get(modality, (0, 0)), strict=True)
        )
        assert (passes, items) == (2, 8)


def test_work_between_requests_is_not_counted_as_serving_time(server: Server):
    calls: list[float] = []

    def pause() -> None:
        calls.append(time.perf_counter())
        time.sleep(0.2)

    body = [b'[{"text": "a dog"}]']
    res = asyncio.run(run_load(server.url, body, concurrency=1, requests=5, between=pause))
    assert len(calls) == 5 and res.errors == 0
    assert res.seconds < 0.5  # 1 s of pauses, not counted
    with pytest.raises(ValueError, match="concurrency 1"):
        asyncio.run(run_load(server.url, body, concurrency=2, requests=2, between=pause))


@pytest.mark.slow
def test_the_zero_shot_scenario_serves_the_prompts_from_the_cache_and_reports_the_ratio(
    tmp_path: Path,
):
    out = tmp_path / "zero-shot.json"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "clipserve.cli",
            "bench",
            "--spawn",
            "--model",
            TINY,
            "--model-config-dir",
            str(MODEL_CONFIGS),
            "--zero-shot",
            "12x3x4",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )
    assert proc.returncode == 0, proc.stderr
    assert "cache off / on:" in proc.stdout
    result = json.loads(out.read_text())
    on, off = result["runs"]
    assert (on["cache"], off["cache"]) == ("on", "off")
    assert on["cache_mb"] > 0 and off["cache_mb"] == 0
    # after the first request every prompt (12 x 3) is a hit; the photos all differ
    assert on["cache_hits"] == 3 * 12 * 3 and off["cache_hits"] == 0
    assert len(on["top_labels"]) == len(off["top_labels"]) == 4
    # (a speed is not asserted: the ratio is what it is on a busy machine, only its arithmetic)
    assert result["ratio_total"] == pytest.approx(off["total_s"] / on["total_s"], abs=0.01)
    assert "same_top_labels" not in result  # random weights: two inits need not agree


def test_the_zero_shot_size_is_parsed_and_checked():
    assert ZeroShot.parse("200x10x20") == ZeroShot(200, 10, 20)
    for bad in ("200x10", "ax1x1", "0x10x20", "200x81x20"):
        with pytest.raises(ValueError):
            ZeroShot.parse(bad)
    bodies = zeroshot_bodies(ZeroShot(5, 2, 3))
    sent = [json.loads(b) for b in bodies]
    assert len(sent) == 3 and all(len(s["labels"]) == 5 and len(s["templates"]) == 2 for s in sent)
    assert len({s["images"][0]["img_blob"] for s in sent}) == 3
