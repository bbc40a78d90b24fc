"""The bare model's speed in fp32, bf16 and int8 on this CPU: items/s per tower and batch.

`python -m clipserve.bench.precision [--model SPEC] [--threads N] [--repeats R]` prints a
markdown table: image at batch 1 and 8 (uint8 in, as served: its normalization included), text
at batch 1 and 32 with full 77-token texts (nothing to trim), each the best of R short timed
runs, with the load average (`uptime`'s 1-minute figure) read as each was measured: on a shared
machine the best of repeated short runs is the least disturbed. Also the uint8 -> dtype
normalization alone, at batch 8. int8 is torch's dynamic quantization of the Linear layers
(weights int8, activations quantized per batch), as `--dtype int8` would have to be.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from functools import partial

import torch

from clipserve.cpu import bf16_support
from clipserve.models import ClipModel, load_model, parse_spec

CASES = (("image", 1), ("image", 8), ("text", 1), ("text", 32))
DTYPES = ("fp32", "bf16", "int8")


def best_rate(
    run: Callable[[], object], items: int, repeats: int, min_s: float
) -> tuple[float, float]:
    """(items/s of the fastest of `repeats` timed runs of >= min_s each, load average then)."""
    run()  # warm: kernels chosen, memory allocated
    best, load = 0.0, 0.0
    for _ in range(repeats):
        n, start = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - start) < min_s or n == 0:
            run()
            n += 1
        rate = n * items / elapsed
        if rate > best:
            best, load = rate, os.getloadavg()[0]
    return best, load


def to_int8(model: ClipModel) -> None:
    """Quantize the Linear layers in place (dynamic int8: fbgemm, VNNI where the CPU has it).

    All but two kinds: attention's output projection (nn.MultiheadAttention reads its
    `.weight`, which a quantized Linear has as a method) and the text tower's first MLP input
    layer (open_clip reads the tower's dtype from its `.weight`).
    """
    q = torch.ao.quantization
    names = {
        name: q.default_dynamic_qconfig
        for name, module in model.model.named_modules()
        if type(module) is torch.nn.Linear and not name.endswith("resblocks.0.mlp.c_fc")
    }
    q.quantize_dynamic(model.model, names, dtype=torch.qint8, inplace=True)


def inputs(model: ClipModel, kind: str, batch: int) -> torch.Tensor:
    """uint8 images, or token rows that fill the whole context (77 tokens for CLIP)."""
    gen = torch.Generator().manual_seed(batch)
    if kind == "image":
        g = model.preprocessing.geometry
        return torch.randint(
            0, 256, (batch, 3, g.height, g.width), dtype=torch.uint8, generator=gen
        )
    rows = model.tokenize(["a photo of a dog " * 40] * batch)  # truncated to the context
    assert int((rows != model.tokenizer_info.pad_id).sum(1).min()) == model.context_length
    return rows


def measure(spec: str, dtype: str, repeats: int, min_s: float) -> dict[str, tuple[float, float]]:
    """case -> (items/s, load average) for one dtype, plus the normalization alone."""
    model = load_model(parse_spec(spec), device="cpu", dtype="fp32" if dtype == "int8" else dtype)
    if dtype == "int8":
        to_int8(model)
    out = {}
    for kind, batch in CASES:
        x = inputs(model, kind, batch)
        # full-context texts leave nothing to trim; int8's Linear has no .weight to trim with
        encode = model.encode_image if kind == "image" else partial(model.encode_text, trim=False)
        out[f"{kind} b{batch}"] = best_rate(partial(encode, x), batch, repeats, min_s)
    pixels = inputs(model, "image", 8)
    scale, shift = model._scale, model._shift  # the served normalization, in the model's dtype
    with torch.inference_mode():
        out["normalize b8"] = best_rate(
            lambda: pixels.to(scale.dtype) * scale - shift, 8, repeats, min_s
        )
    return out


def image_stages(repeats: int, min_s: float) -> list[tuple[str, int, float, float]]:
    """(image, bytes, ms to decode and resize it to 224x224 as served, load average), for the
    bench's JPEGs (photo-like, quality 90), with and without JPEG draft-mode scaling."""
    from clipserve.bench.workloads import photo_bytes
    from clipserve.images import Geometry, ImageLimits, prepare_image

    geometry, limits = Geometry.square(224), ImageLimits()
    rows = []
    for size in ((640, 480), (1920, 1080)):
        data = photo_bytes("JPEG", size)
        for draft in (True, False):
            run = partial(prepare_image, data, geometry, limits, draft=draft)
            rate, load = best_rate(run, 1, repeats, min_s)
            name = f"JPEG {size[0]}x{size[1]}" + ("" if draft else ", no draft")
            rows.append((name, len(data), 1000 / rate, load))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m clipserve.bench.precision", description=__doc__)
    p.add_argument("--model", default="ViT-B-32:random")
    p.add_argument("--model-config-dir", help="extra open_clip configs")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--min-s", type=float, default=1.0, help="least time per timed run")
    p.add_argument("--dtype", action="append", choices=DTYPES, help="default: all")
    args = p.parse_args(argv)
    if args.model_config_dir:
        from clipserve.models import add_model_configs

        add_model_configs(args.model_config_dir)
    torch.set_num_threads(args.threads)
    dtypes = args.dtype or list(DTYPES)
    rows = {dt: measure(args.model, dt, args.repeats, args.min_s) for dt in dtypes}
    cases = list(rows[dtypes[0]])
    print(
        f"{args.model}, {args.threads} threads, torch {torch.__version__}, "
        f"{bf16_support().reason}; items/s, best of {args.repeats} (load average then)\n"
    )
    print("| dtype | " + " | ".join(cases) + " |")
    print("| --- |" + " --- |" * len(cases))
    for dt, row in rows.items():
        cells = []
        for case in cases:
            rate, load = row[case]
            base = rows[dtypes[0]][case][0]
            ratio = f" {rate / base:.1f}x" if dt != dtypes[0] else ""
            cells.append(f"{rate:.1f}{ratio} ({load:.1f})")
        print(f"| {dt} | " + " | ".join(cells) + " |")
    print("\n| image (decode + resize to 224, one thread) | bytes | ms (load average) |")
    print("| --- | --- | --- |")
    for name, size, ms, load in image_stages(args.repeats, args.min_s):
        print(f"| {name} | {size} | {ms:.2f} ({load:.1f}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
