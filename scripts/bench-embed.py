"""`clipserve embed` items/s on a generated folder of photo-sized JPEGs, against the bare
model's ceiling at the same batch size (forward passes alone on pre-decoded pixels), and
against LAION's `clip-retrieval inference` on the same folder when a venv with it is given.

Usage: .venv/bin/python scripts/bench-embed.py [--images 512] [--model ViT-B-32:random]
           [--clip-retrieval /tmp/cr-venv]
The embed rate is its own `done` line (items over the seconds after the model loaded, decode,
batching and Parquet writing included); the wall time of each command includes start-up. The
ceiling is the better of the server's two CPU layouts (one pass on every thread, or one
single-threaded pass per CPU at once), sustained (passes back to back), taken before and after
the run: on a shared machine the spread says how much to trust the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]


def make_folder(folder: Path, count: int, size: tuple[int, int]) -> int:
    """`count` photo-like JPEGs (smooth colour fields with grain, quality 90); total bytes."""
    rng = np.random.default_rng(0)
    total = 0
    for i in range(count):
        coarse = rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)
        im = Image.fromarray(coarse).resize(size, Image.Resampling.BICUBIC)
        grain = rng.normal(0, 12, (size[1], size[0], 3))
        pixels = np.clip(np.asarray(im, dtype=np.float32) + grain, 0, 255).astype(np.uint8)
        path = folder / f"{i // 100:03d}" / f"img{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(pixels).save(path, quality=90)
        total += path.stat().st_size
    return total


def ceiling(bare: object, batch: int, workers: int) -> dict[str, float]:
    """Sustained and peak image items/s of the bare model at `batch`, best layout."""
    best = {"sustained": 0.0, "peak": 0.0}
    for passes in sorted({1, workers}):
        peak, sustained = bare.rates("image", batch, passes, min_s=4.0, reps=3)  # type: ignore[attr-defined]
        best = {"sustained": max(best["sustained"], sustained), "peak": max(best["peak"], peak)}
    return best


def cpu_per_item(bare: object, batch: int, workers: int, rounds: int = 3) -> float:
    """CPU seconds (every thread) per image of the bare model's passes in the server's CPU
    layout (`workers` single-threaded passes at once): on a shared machine CPU time per item
    moves far less than items/s, which other work's share of the cores decides."""
    import torch

    fn = bare.forward("image", batch)  # type: ignore[attr-defined]
    with ThreadPoolExecutor(workers, initializer=lambda: torch.set_num_threads(1)) as pool:
        list(pool.map(lambda _: fn(), range(workers)))  # warm-up
        start = time.process_time()
        list(pool.map(lambda _: fn(), range(workers * rounds)))
        return (time.process_time() - start) / (workers * rounds * batch)


def decode_rate(files: list[Path], geometry: object, threads: int) -> float:
    """Images/s of the server's decode + resize alone, on `threads` threads."""
    from clipserve.models.images import ImageLimits, prepare_image

    limits = ImageLimits()
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(lambda p: prepare_image(p.read_bytes(), geometry, limits), files))
    return len(files) / (time.perf_counter() - start)


def run_embed(folder: Path, out: Path, model: str, dtype: str) -> tuple[dict, float]:
    """`clipserve embed` as a user runs it; its done event and the command's wall seconds."""
    command = [
        str(ROOT / ".venv/bin/clipserve"), "embed", "--model", model, str(folder),
        "--output", str(out), "--progress", "lines", "--dtype", dtype, "--log-level", "warning",
    ]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    done = [json.loads(x) for x in proc.stdout.splitlines() if '"done"' in x][-1]
    return done, wall


def run_clip_retrieval(venv: Path, folder: Path, work: Path, batch: int) -> tuple[float, float]:
    """`clip-retrieval inference` on the same folder (fp32: what it runs on a CPU), ViT-B-32
    with random weights saved as a local open_clip checkpoint (no weights can be downloaded
    here): its own post-warm-up items/s (stats/0.json: items over `total_duration`, the loop
    after the model loaded and warmed up) and the command's wall seconds."""
    ckpt = work / "vitb32-random.pt"
    subprocess.run(
        [str(venv / "bin/python"), "-c",
         "import open_clip, torch, sys; torch.manual_seed(0); "
         "torch.save(open_clip.create_model('ViT-B-32').state_dict(), sys.argv[1])", str(ckpt)],
        check=True,
    )  # fmt: skip
    out = work / "cr-out"
    command = [
        str(venv / "bin/clip-retrieval"), "inference", "--input_dataset", str(folder),
        "--output_folder", str(out), "--input_format", "files",
        "--clip_model", f"open_clip:ViT-B-32/{ckpt}", "--batch_size", str(batch),
        "--num_prepro_workers", str(os.cpu_count()), "--enable_text", "False",
        "--enable_metadata", "False",
    ]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, cwd=work)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"clip-retrieval failed:\n{proc.stderr[-3000:]}")
    stats = json.loads((out / "stats" / "0.json").read_text())
    return stats["sample_count"] / stats["total_duration"], wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--size", default="500x375", help="WxH of the generated JPEGs")
    parser.add_argument("--model", default="ViT-B-32:random")
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--clip-retrieval", type=Path, metavar="VENV")
    args = parser.parse_args()

    from clipserve.bench.ceiling import BareModel
    from clipserve.settings import Settings

    w, h = (int(x) for x in args.size.split("x"))
    with tempfile.TemporaryDirectory(prefix="bench-embed-") as tmp:
        work = Path(tmp)
        folder = work / "images"
        size = make_folder(folder, args.images, (w, h))
        print(f"folder: {args.images} JPEGs {w}x{h}, {size / args.images / 1e3:.0f} KB each")
        bare = BareModel(args.model, dtype=args.dtype, max_batch=128)
        device = bare.model.device.type
        settings = Settings()
        batch = settings.batch_size_for(device)
        workers = settings.workers_for(device)
        files = sorted(folder.rglob("*.jpg"))
        geometry = bare.model.preprocessing.geometry
        print(f"model {args.model} on {device}, {bare.model.precision}, batch {batch}")
        decode = decode_rate(files, geometry, settings.preprocess_threads)
        print(f"decode + resize alone ({settings.preprocess_threads} threads): {decode:.1f} img/s")
        before = ceiling(bare, batch, workers)
        print(
            f"ceiling before: {before['sustained']:.1f} img/s sustained, {before['peak']:.1f} peak"
        )
        bare_cpu = cpu_per_item(bare, batch, workers)
        print(f"bare model: {1000 * bare_cpu:.1f} CPU-ms per image ({workers}x1 layout)")
        del bare  # the embed process gets the machine to itself
        done, wall = run_embed(folder, work / "out", args.model, args.dtype)
        print(
            f"clipserve embed: {done['items_per_s']:.1f} img/s after load "
            f"({done['items']} items, {done['failed']} failed); {wall:.1f} s wall, "
            f"{args.images / wall:.1f} img/s counting start-up"
        )
        embed_cpu = done["cpu_seconds"] / done["items"]
        print(
            f"clipserve embed: {1000 * embed_cpu:.1f} CPU-ms per image; bare / embed CPU per "
            f"image: {bare_cpu / embed_cpu:.3f} (the share of embed's CPU in forward passes)"
        )
        bare = BareModel(args.model, dtype=args.dtype, max_batch=128)
        after = ceiling(bare, batch, workers)
        del bare
        print(f"ceiling after:  {after['sustained']:.1f} img/s sustained, {after['peak']:.1f} peak")
        mean = (before["sustained"] + after["sustained"]) / 2
        ratio = done["items_per_s"] / mean
        print(f"embed / ceiling (sustained, mean of before and after): {ratio:.3f}")
        if args.clip_retrieval:  # it computes in fp32 on a CPU: compare embed at fp32 too
            fp32 = (done, wall) if args.dtype == "fp32" else None
            fp32 = fp32 or run_embed(folder, work / "out-fp32", args.model, "fp32")
            print(
                f"clipserve embed --dtype fp32: {fp32[0]['items_per_s']:.1f} img/s after load; "
                f"{fp32[1]:.1f} s wall"
            )
            rate, cr_wall = run_clip_retrieval(args.clip_retrieval, folder, work, batch)
            print(f"clip-retrieval inference: {rate:.1f} img/s after load; {cr_wall:.1f} s wall")
            print(
                f"embed fp32 / clip-retrieval: {fp32[0]['items_per_s'] / rate:.2f}x after load, "
                f"{cr_wall / fp32[1]:.2f}x in wall time"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
