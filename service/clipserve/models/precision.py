"""auto's bf16 self-check on a CPU: the model cast to bf16 only if it still agrees with fp32.

On fixed inputs (captions, photo-like images made from a seed), through the served encoders
(trimmed text, uint8 normalization): every vector's cosine to fp32's at least COSINE_BAR and the
same ranking on a fixed /rank case (texts over images and images over texts). The fp32 weights
are kept until the verdict (1.5x the fp32 model's memory meanwhile) and put back if it fails.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from clipserve.models.clip import ClipModel, normalize

# Every vector of the self-check must be this close to fp32's (cosine), or auto keeps fp32.
COSINE_BAR = 0.999
# Fixed inputs for the self-check: captions of different kinds and lengths, and photo-like
# images (smooth colour fields plus grain) made from a fixed seed.
CHECK_TEXTS = (
    "a photo of a dog",
    "a diagram of a neural network, drawn by hand on a whiteboard in a lecture hall",
    "two red apples on a wooden table",
    "a city street at night, with neon signs reflected in the wet asphalt after the rain",
    "a cat",
    "an aerial view of a coastline with white cliffs and a lighthouse",
)
CHECK_IMAGES = 4
# Candidates whose fp32 cosines are closer than this are a tie in the ranking check: rounding
# the two output vectors to bf16 (8-bit mantissa, half a step 2**-9 each) alone moves a cosine
# by up to ~2**-8. Measured: the tiny test model's random weights put candidates 0.001-0.002
# apart and bf16 swapped such pairs; a trained model's match stands ~0.05 above the rest.
RANK_TIE = 2**-8
_SEED = 29
# Families whose bf16 vectors missed the bar on the larger quality set (32 images, 16 prompts:
# `python -m clipserve.bench.quality`, docs/performance.md): auto keeps them in fp32 without
# trying, as the self-check's few inputs could pass by luck. Keyed by a part of the arch name.
UNFIT = {
    "PE-Core": "PE-Core's image tower in bf16 missed the bar on the quality set (min cosine "
    "0.992, mean 0.9985 for PE-Core-T-16-384; docs/performance.md)",
}


@dataclass(frozen=True)
class Agreement:
    """How the bf16 model's self-check outputs compare with fp32's."""

    min_cosine: float  # over every text and image vector
    same_ranking: bool  # every query orders the candidates as fp32 does (texts <-> images)

    def passes(self, bar: float) -> bool:
        return self.min_cosine >= bar and self.same_ranking

    def describe(self) -> str:
        ranking = "same ranking" if self.same_ranking else "a different ranking"
        return f"min cosine {self.min_cosine:.5f} vs fp32, {ranking} on a fixed /rank case"


def settle(model: ClipModel, reason: str) -> str:
    """Cast an fp32 model to bf16 if its outputs on fixed inputs agree with fp32's; else put
    its fp32 weights back. Returns `reason` with the verdict."""
    unfit = next((why for part, why in UNFIT.items() if part in model.spec.arch), None)
    if unfit:
        return f"{reason}, but fp32: {unfit}"
    bar = COSINE_BAR  # read at each call: tests raise it to stage a model that fails
    tokens = model.tokenize(list(CHECK_TEXTS))
    pixels = check_images(model.preprocessing.geometry.height, model.preprocessing.geometry.width)
    texts, images = model.encode_text(tokens), model.encode_image(pixels)
    restore = model.cast(torch.bfloat16)
    agreement = compare((texts, images), (model.encode_text(tokens), model.encode_image(pixels)))
    if agreement.passes(bar):
        return f"{reason}; bf16 agrees with fp32 ({agreement.describe()})"
    restore()
    return (
        f"{reason}, but fp32: bf16 disagrees with fp32 on this model ({agreement.describe()}; "
        f"the bar is cosine >= {bar} and the same ranking)"
    )


def compare(
    reference: tuple[torch.Tensor, torch.Tensor], got: tuple[torch.Tensor, torch.Tensor]
) -> Agreement:
    """Per-vector cosine and /rank orders (each text over the images, each image over the
    texts) of `got` against `reference`; each a (texts, images) pair of vectors."""
    ref_t, ref_i = (normalize(v.float()) for v in reference)
    got_t, got_i = (normalize(v.float()) for v in got)
    cosine = torch.cat([(ref_t * got_t).sum(-1), (ref_i * got_i).sum(-1)])
    same = not any(
        _inverted(a @ b.T, c @ d.T)
        for a, b, c, d in ((ref_t, ref_i, got_t, got_i), (ref_i, ref_t, got_i, got_t))
    )
    return Agreement(float(cosine.min()), same)


def _inverted(reference: torch.Tensor, got: torch.Tensor) -> bool:
    """Whether some query ranks two candidates the other way round from `reference`, counting
    only pairs `reference` sets more than RANK_TIE apart (closer ones are a tie to either)."""
    ref_gap = reference.unsqueeze(-1) - reference.unsqueeze(-2)  # [query, j, k]: s_j - s_k
    got_gap = got.unsqueeze(-1) - got.unsqueeze(-2)
    return bool(((ref_gap > RANK_TIE) & (got_gap < 0)).any())


def check_images(height: int, width: int, n: int = CHECK_IMAGES) -> torch.Tensor:
    """`n` photo-like uint8 images [n, 3, H, W], the same on every call."""
    gen = torch.Generator().manual_seed(_SEED)
    coarse = torch.randint(0, 256, (n, 3, 8, 8), generator=gen).float()
    smooth = torch.nn.functional.interpolate(
        coarse, size=(height, width), mode="bicubic", align_corners=False
    )
    grain = torch.randn(n, 3, height, width, generator=gen) * 6
    return (smooth + grain).clamp(0, 255).to(torch.uint8)
