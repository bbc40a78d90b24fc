"""The bare model's speed in fp32, bf16 and int8 on this CPU: items/s per tower and batch.

`python -m clipserve.bench.precision [--model SPEC] [--threads N] [--rounds R]` prints a
markdown table: image at batch 1 and 8 (uint8 in, as served: its normalization included), text
at batch 1 and 32 with full 77-token texts (nothing to trim), and the uint8 -> dtype
normalization alone at batch 8. On a shared machine a pass is slowed by whatever else runs, so
each figure is the fastest of R passes, the dtypes taking turns pass by pass (each sees the
same load), with the load average (`uptime`'s 1-minute figure) read at that fastest pass.
int8 is torch's dynamic quantization of the Linear layers (weights int8, activations quantized
per batch), as a `--dtype int8` would have to be.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from functools import partial

import torch

from clipserve.models import ClipModel, load_model, parse_spec
from clipserve.models.cpu import bf16_support

CASES = (("image", 1), ("image", 8), ("text", 1), ("text", 32))
DTYPES = ("fp32", "bf16", "int8")


def fastest(run: Callable[[], object], items: int, repeats: int) -> tuple[float, float]:
    """(items/s of the fastest of `repeats` passes, load average then), after a warm pass."""
    run()  # kernels chosen, memory allocated
    best, load = float("inf"), 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        if (took := time.perf_counter() - start) < best:
            best, load = took, os.getloadavg()[0]
    return items / best, load


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


def load(spec: str, dtype: str) -> ClipModel:
    """The model in `dtype` (int8: quantized from fp32)."""
    model = load_model(parse_spec(spec), device="cpu", dtype="fp32" if dtype == "int8" else dtype)
    if dtype == "int8":
        to_int8(model)
    return model


def passes(model: ClipModel) -> dict[str, tuple[Callable[[], object], int]]:
    """case -> (one pass, items in it)."""
    out: dict[str, tuple[Callable[[], object], int]] = {}
    for kind, batch in CASES:
        x = inputs(model, kind, batch)
        # full-context texts leave nothing to trim; int8's Linear has no .weight to trim with
        encode = model.encode_image if kind == "image" else partial(model.encode_text, trim=False)
        out[f"{kind} b{batch}"] = (partial(encode, x), batch)
    pixels = inputs(model, "image", 8)
    scale, shift = model._scale, model._shift  # the served normalization, in the model's dtype

    @torch.inference_mode()
    def normalize() -> torch.Tensor:
        return pixels.to(scale.dtype) * scale - shift

    out["normalize b8"] = (normalize, 8)
    return out


def measure(spec: str, dtypes: list[str], rounds: int) -> dict[str, dict[str, tuple[float, float]]]:
    """dtype -> case -> (items/s, load average): per case, the dtypes take turns pass by pass."""
    runs = {dt: passes(load(spec, dt)) for dt in dtypes}
    out: dict[str, dict[str, tuple[float, float]]] = {dt: {} for dt in dtypes}
    for case in runs[dtypes[0]]:
        for dt in dtypes:
            runs[dt][case][0]()  # warm
        best = {dt: (0.0, 0.0) for dt in dtypes}
        for _ in range(rounds):
            for dt in dtypes:
                run, items = runs[dt][case]
                rate, load_avg = fastest(run, items, 1)
                if rate > best[dt][0]:
                    best[dt] = (rate, load_avg)
        for dt in dtypes:
            out[dt][case] = best[dt]
    return out


def image_stages(repeats: int) -> list[tuple[str, int, float, float]]:
    """(image, bytes, ms to decode and resize it to 224x224 as served, load average), for the
    bench's JPEGs (photo-like, quality 90), with and without JPEG draft-mode scaling."""
    from clipserve.bench.workloads import photo_bytes
    from clipserve.models.images import Geometry, ImageLimits, prepare_image

    geometry, limits = Geometry.square(224), ImageLimits()
    rows = []
    for size in ((640, 480), (1920, 1080)):
        data = photo_bytes("JPEG", size)
        for draft in (True, False):
            run = partial(prepare_image, data, geometry, limits, draft=draft)
            rate, load_avg = fastest(run, 1, repeats)
            name = f"JPEG {size[0]}x{size[1]}" + ("" if draft else ", no draft")
            rows.append((name, len(data), 1000 / rate, load_avg))
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m clipserve.bench.precision", description=__doc__)
    p.add_argument("--model", default="ViT-B-32:random")
    p.add_argument("--model-config-dir", help="extra open_clip configs")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--rounds", type=int, default=10, help="passes per dtype and case")
    p.add_argument("--dtype", action="append", choices=DTYPES, help="default: all")
    args = p.parse_args(argv)
    if args.model_config_dir:
        from clipserve.models import add_model_configs

        add_model_configs(args.model_config_dir)
    torch.set_num_threads(args.threads)
    dtypes = args.dtype or list(DTYPES)
    rows = measure(args.model, dtypes, args.rounds)
    cases = list(rows[dtypes[0]])
    print(
        f"{args.model}, {args.threads} threads, torch {torch.__version__}, "
        f"{bf16_support().reason}; items/s, fastest of {args.rounds} passes (load average then)\n"
    )
    print("| dtype | " + " | ".join(cases) + " |")
    print("| --- |" + " --- |" * len(cases))
    for dt, row in rows.items():
        cells = []
        for case in cases:
            rate, load_avg = row[case]
            base = rows[dtypes[0]][case][0]
            ratio = f" {rate / base:.1f}x" if dt != dtypes[0] else ""
            cells.append(f"{rate:.1f}{ratio} ({load_avg:.1f})")
        print(f"| {dt} | " + " | ".join(cells) + " |")
    print("\n| image (decode + resize to 224, one thread) | bytes | ms (load average) |")
    print("| --- | --- | --- |")
    for name, size, ms, load_avg in image_stages(args.rounds):
        print(f"| {name} | {size} | {ms:.2f} ({load_avg:.1f}) |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
