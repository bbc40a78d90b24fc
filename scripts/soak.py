"""Soak test: mixed load on a real clipserve process for a bounded time, printing its RSS.

    .venv/bin/python scripts/soak.py --minutes 10 [--model ViT-B-32:random] [--concurrency 8]

Traffic stays on loopback. The mix: texts, PNG and JPEG blobs of several sizes, /rank,
/v1/embeddings, and bad requests (invalid base64, not-an-image, unknown model, refused URLs),
so error paths are soaked too. Prints one line per sample and the growth from the first
sample after warm-up to the end; exit status 1 if any request got a 5xx.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import io
import itertools
import random
import sys
import time

import httpx
import psutil
from clipserve.bench.server import start_server
from PIL import Image


def _image_b64(size: tuple[int, int], fmt: str, seed: int) -> str:
    rnd = random.Random(seed)
    img = Image.new("RGB", size, (rnd.randrange(256), rnd.randrange(256), rnd.randrange(256)))
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return base64.b64encode(buf.getvalue()).decode()


def _requests() -> list[tuple[str, object]]:
    imgs = [
        _image_b64(s, f, i)
        for i, (s, f) in enumerate(
            [((224, 224), "PNG"), ((640, 480), "JPEG"), ((1920, 1080), "JPEG"), ((1, 1), "PNG")]
        )
    ]
    good = [
        ("/encode", [{"text": "a photo of a dog"}]),
        ("/encode", [{"text": f"caption {i}"} for i in range(8)]),
        ("/encode", [{"img_blob": b} for b in imgs]),
        ("/encode", {"items": [{"text": "x"}, {"img_blob": imgs[0]}], "normalize": True}),
        (
            "/rank",
            {
                "queries": [{"img_blob": imgs[1]}],
                "candidates": [{"text": t} for t in ("a dog", "a cat", "a car")],
            },
        ),
        ("/v1/embeddings", {"input": ["a", "b", "c"]}),
    ]
    bad = [
        ("/encode", [{"img_blob": "not base64!!"}]),
        ("/encode", [{"img_blob": base64.b64encode(b"plain text").decode()}]),
        ("/encode", {"items": [{"text": "x"}], "model": "nope"}),
        ("/encode", [{"img_uri": "http://127.0.0.1:1/refused-by-the-ssrf-guard.png"}]),
    ]
    return good * 4 + bad


async def _worker(client: httpx.AsyncClient, deadline: float, mix: list, counts: dict) -> None:
    for path, body in itertools.cycle(mix):
        if time.monotonic() > deadline:
            return
        try:
            r = await client.post(path, json=body)
            key = f"{r.status_code // 100}xx"
        except httpx.HTTPError as exc:
            key = type(exc).__name__
        counts[key] = counts.get(key, 0) + 1


async def soak(url: str, pid: int, minutes: float, concurrency: int, every_s: float) -> int:
    proc = psutil.Process(pid)
    deadline = time.monotonic() + minutes * 60
    counts: dict[str, int] = {}
    mix = _requests()
    samples: list[tuple[float, float]] = []
    start = time.monotonic()
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        workers = [
            asyncio.create_task(
                _worker(client, deadline, random.Random(i).sample(mix, len(mix)), counts)
            )
            for i in range(concurrency)
        ]
        print(f"{'t (s)':>7} {'RSS (MiB)':>10} {'requests':>9}  status counts", flush=True)
        while not all(w.done() for w in workers):
            await asyncio.sleep(every_s)
            rss = proc.memory_info().rss / 2**20
            samples.append((time.monotonic() - start, rss))
            print(
                f"{samples[-1][0]:7.0f} {rss:10.1f} {sum(counts.values()):9d}  "
                f"{dict(sorted(counts.items()))}",
                flush=True,
            )
        await asyncio.gather(*workers)
    warm = samples[min(2, len(samples) - 1)][1]
    end = samples[-1][1]
    peak = max(s[1] for s in samples)
    print(
        f"RSS after warm-up {warm:.1f} MiB, at end {end:.1f} MiB, peak {peak:.1f} MiB, "
        f"growth {end - warm:+.1f} MiB ({(end - warm) / warm * 100:+.1f}%)"
    )
    return 1 if counts.get("5xx") else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--minutes", type=float, default=10)
    p.add_argument("--model", default="ViT-B-32:random")
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--every-s", type=float, default=30)
    args = p.parse_args()
    srv = start_server(args.model)
    try:
        return asyncio.run(
            soak(srv.url, srv.proc.pid, args.minutes, args.concurrency, args.every_s)
        )
    finally:
        srv.stop()


if __name__ == "__main__":
    sys.exit(main())
