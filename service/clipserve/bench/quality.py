"""bf16 against fp32 for each model family: how close the vectors stay, and whether zero-shot
classification picks the same class.

`python -m clipserve.bench.quality [--family NAME ...] [--cache-dir DIR] [--threads N]` prints a
markdown table (docs/performance.md holds one). Each family is its smallest config in the model
sweep (tests/service/engine/test_sweep.py), with random weights from load_model's fixed seed
(nothing is downloaded); families whose tokenizer lives on the hub (SigLIP, SigLIP2, CLIPA) need
it in --cache-dir. Every model goes through the served path (tokenizer, trimmed text tower, uint8
normalization) in fp32, then cast to bf16 as `--dtype auto` casts it, and again.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass

import torch

from clipserve.bench.precision import to_int8
from clipserve.models import ClipModel, ModelLoadError, load_model, normalize, parse_spec
from clipserve.models.precision import COSINE_BAR, RANK_TIE, check_images

# family -> its smallest config under the sweep's size cap (DFN: its smallest architecture)
FAMILIES = {
    "ViT CLIP (ViT-B-32)": "ViT-B-32",
    "ViT CLIP": "ViT-S-16-alt",
    "DFN": "ViT-B-16-quickgelu",
    "ConvNeXt": "convnext_tiny",
    "EVA": "EVA02-B-16",
    "SigLIP": "ViT-B-16-SigLIP",
    "SigLIP2": "ViT-B-16-SigLIP2",
    "CLIPA": "ViT-L-14-CLIPA",
    "PE-Core": "PE-Core-T-16-384",
    "MobileCLIP": "MobileCLIP-S1",
    "MobileCLIP2": "MobileCLIP2-S0",
    "CoCa": "coca_ViT-B-32",
}
# The zero-shot set: a prompt per class, and photo-like images made from a fixed seed.
CLASSES = (
    "dog", "cat", "car", "airplane", "bird", "ship", "horse", "truck", "apple", "mountain",
    "bicycle", "chair", "guitar", "lighthouse", "pizza", "rose",
)  # fmt: skip
TEMPLATE = "a photo of a {}."
IMAGES = 32
_CHUNK = 8  # images per forward pass


@dataclass(frozen=True)
class Quality:
    """bf16 against fp32 on the fixed set, for one model."""

    spec: str
    image_min: float  # cosine of each image vector to its fp32 twin
    image_mean: float
    text_min: float
    text_mean: float
    top1_same: float  # share of images whose zero-shot class is the same in bf16
    decisive_flips: int  # images bf16 classes differently where fp32's lead was > RANK_TIE

    @property
    def passes(self) -> bool:
        """The self-check's bar: cosine >= COSINE_BAR and no ranking change beyond a tie."""
        return min(self.image_min, self.text_min) >= COSINE_BAR and self.decisive_flips == 0


def measure(model: ClipModel, images: int = IMAGES, dtype: str = "bf16") -> Quality:
    """Run the fixed set in fp32, convert `model` to `dtype` (bf16 as auto casts it, or int8 as
    bench/precision.py quantizes it; for good) and run it again."""
    tokens = model.tokenize([TEMPLATE.format(c) for c in CLASSES])
    g = model.preprocessing.geometry
    pixels = check_images(g.height, g.width, n=images)

    def run() -> tuple[torch.Tensor, torch.Tensor]:
        vectors = [model.encode_image(chunk) for chunk in pixels.split(_CHUNK)]
        return normalize(model.encode_text(tokens)), normalize(torch.cat(vectors))

    ref_text, ref_image = run()
    if dtype == "int8":
        to_int8(model)
    else:
        model.cast(torch.bfloat16)
    text, image = run()
    image_cos, text_cos = (ref_image * image).sum(-1), (ref_text * text).sum(-1)
    ref_scores, scores = ref_image @ ref_text.T, image @ text.T
    ref_top, top = ref_scores.argmax(-1), scores.argmax(-1)
    lead = ref_scores.gather(1, ref_top[:, None]) - ref_scores.gather(1, top[:, None])
    return Quality(
        spec=model.spec.raw,
        image_min=float(image_cos.min()),
        image_mean=float(image_cos.mean()),
        text_min=float(text_cos.min()),
        text_mean=float(text_cos.mean()),
        top1_same=float((ref_top == top).float().mean()),
        decisive_flips=int((lead > RANK_TIE).sum()),
    )


def measure_spec(spec: str, cache_dir: str | None = None, dtype: str = "bf16") -> Quality:
    """`measure` for a spec loaded in fp32 on the CPU (offline)."""
    model = load_model(
        parse_spec(spec), device="cpu", dtype="fp32", cache_dir=cache_dir, offline=True
    )
    return measure(model, dtype=dtype)


def table(rows: list[tuple[str, Quality | str]]) -> str:
    """A markdown table: per family, the figures or why it was not measured."""
    lines = [
        "| family | config | image cosine min / mean | text cosine min / mean | "
        "zero-shot top-1 same | verdict |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for family, q in rows:
        if isinstance(q, str):
            lines.append(f"| {family} | {FAMILIES.get(family, '')} | - | - | - | {q} |")
            continue
        verdict = "passes" if q.passes else "fails the bar (auto: fp32)"
        lines.append(
            f"| {family} | {q.spec.removesuffix(':random')} | {q.image_min:.5f} / "
            f"{q.image_mean:.5f} | {q.text_min:.5f} / {q.text_mean:.5f} | "
            f"{q.top1_same:.0%} ({q.decisive_flips} beyond a tie) | {verdict} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m clipserve.bench.quality", description=__doc__)
    p.add_argument("--family", action="append", choices=sorted(FAMILIES), help="default: all")
    p.add_argument("--cache-dir", help="a HF cache holding the hub tokenizers (SigLIP, CLIPA)")
    p.add_argument("--threads", type=int, default=torch.get_num_threads())
    p.add_argument("--dtype", choices=("bf16", "int8"), default="bf16", help="against fp32")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    rows: list[tuple[str, Quality | str]] = []
    for family in args.family or list(FAMILIES):
        try:
            spec = f"{FAMILIES[family]}:random"
            rows.append((family, measure_spec(spec, args.cache_dir, args.dtype)))
        except ModelLoadError as exc:
            rows.append((family, f"not measured: {exc}"))
        print(table(rows[-1:]).splitlines()[-1], file=sys.stderr, flush=True)
    print(table(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
