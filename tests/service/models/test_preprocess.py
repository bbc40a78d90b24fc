"""Every preprocess config open_clip's pretrained tags use: clipserve's pixels vs open_clip's own.

The configs are enumerated from open_clip's metadata (not listed here), deduplicated by what
changes pixels (size, resize mode, interpolation, mean/std, fill). For each, clipserve's uint8
pixels, normalized as the model does on its device, must equal `image_transform_v2`'s output
bit for bit on awkward images. Where clipserve deliberately differs (transparency composited on
white, 16-bit scaled to 8 bits: see images.py), open_clip is given the image as clipserve reads
it, and the rest must still be bit for bit. JPEG draft decoding is held to the tolerance that
tests/service/models/test_images.py states for CLIP's recipe (mean error < 1.5 grey levels, 99% of
values within 8), for every config.
"""

from __future__ import annotations

import functools
import io

import numpy as np
import open_clip
import pytest
import torch
from clipserve.models.images import Geometry, ImageLimits, prepare_image
from clipserve.models.recipe import Preprocessing, preprocessing_from_cfg, tag_preprocess_cfg
from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict
from PIL import Image

from tests.service.models.test_images import encode, photo

LIMITS = ImageLimits()


def _pretrained_cfgs() -> dict[str, dict]:
    """One open_clip preprocess config per distinct pixel recipe, named by a tag that uses it."""
    found: dict[tuple, tuple[str, dict]] = {}
    for arch, tag in open_clip.list_pretrained():
        size = open_clip.get_model_config(arch)["vision_cfg"].get("image_size", 224)
        cfg = {**merge_preprocess_dict(PreprocessCfg(), open_clip.get_pretrained_cfg(arch, tag))}
        cfg["size"] = size
        key = tuple(str(cfg[k]) for k in ("size", "resize_mode", "interpolation", "mean", "std"))
        found.setdefault((*key, str(cfg["fill_color"])), (f"{arch}:{tag}", cfg))
    return dict(found.values())


PRETRAINED = _pretrained_cfgs()
# What no pretrained tag uses but a model config may (local-dir:, hf-hub:, --model-config-dir):
# the longest side with padding (and a fill colour), non-square sizes in every mode.
EXTRA = {
    "longest-bicubic-fill0": {"size": 224, "resize_mode": "longest"},
    "longest-bilinear-fill128": {
        "size": 256,
        "resize_mode": "longest",
        "interpolation": "bilinear",
        "fill_color": 128,
    },
    "squash-192x320": {"size": (192, 320), "resize_mode": "squash", "interpolation": "bilinear"},
    "shortest-320x192": {"size": (320, 192), "resize_mode": "shortest"},
    "longest-192x320-fill255": {"size": (192, 320), "resize_mode": "longest", "fill_color": 255},
}
CONFIGS = {
    **PRETRAINED,
    **{k: merge_preprocess_dict(PreprocessCfg(), v) for k, v in EXTRA.items()},
}


def test_the_enumeration_covers_every_recipe_the_issue_names() -> None:
    modes = {(c["resize_mode"], c["interpolation"]) for c in PRETRAINED.values()}
    assert {("shortest", "bicubic"), ("squash", "bicubic"), ("squash", "bilinear")} <= modes
    assert ("shortest", "bilinear") in modes  # MobileCLIP
    assert len({str(c["mean"]) for c in PRETRAINED.values()}) >= 4  # OpenAI, 0.5, ImageNet, 0
    assert len({c["size"] for c in PRETRAINED.values()}) >= 8
    assert len(PRETRAINED) >= 12


@functools.cache
def awkward() -> dict[str, tuple[bytes, Image.Image]]:
    """name -> (file bytes clipserve gets, the image open_clip is given)."""
    out: dict[str, tuple[bytes, Image.Image]] = {}
    for name, (w, h) in {
        "portrait": (480, 640),
        "landscape-3to1": (900, 300),
        "tiny": (5, 3),
        "one-pixel": (1, 1),
        "strip": (7, 90),
        "huge": (2400, 1600),
    }.items():
        data = encode(photo(w, h), "PNG")
        out[name] = (data, Image.open(io.BytesIO(data)))
    grey = encode(photo(333, 500, seed=1).convert("L"), "PNG")
    out["grey"] = (grey, Image.open(io.BytesIO(grey)))
    opaque = encode(photo(300, 200, seed=2).convert("RGBA"), "PNG")
    out["rgba-opaque"] = (opaque, Image.open(io.BytesIO(opaque)))
    # Semi-transparent: clipserve composites on white (open_clip would drop alpha and show the
    # colour under it), so open_clip gets the composited image.
    rgba = photo(260, 390, seed=3).convert("RGBA")
    rgba.putalpha(Image.linear_gradient("L").resize(rgba.size))
    on_white = Image.new("RGB", rgba.size, (255, 255, 255))
    on_white.paste(rgba, mask=rgba.getchannel("A"))
    out["rgba-translucent"] = (encode(rgba, "PNG"), on_white)
    # 16-bit grey: clipserve keeps the top 8 bits (open_clip would clip everything > 255 to
    # white), so open_clip gets those 8 bits.
    wide = np.asarray(photo(320, 240, seed=4).convert("L")).astype(np.uint16) * 257
    sixteen = encode(Image.fromarray(wide), "PNG")  # mode I;16
    out["grey-16bit"] = (sixteen, Image.fromarray((wide >> 8).astype(np.uint8), mode="L"))
    return out


def _normalized(pixels: torch.Tensor, pre: Preprocessing) -> torch.Tensor:
    """What ToTensor + Normalize compute, from clipserve's uint8 pixels."""
    mean = torch.tensor(pre.mean).view(3, 1, 1)
    std = torch.tensor(pre.std).view(3, 1, 1)
    return (pixels.float() / 255 - mean) / std


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_pixels_equal_open_clips_image_transform_v2(name: str) -> None:
    cfg = CONFIGS[name]
    reference = image_transform_v2(PreprocessCfg(**cfg), is_train=False)
    pre = preprocessing_from_cfg(cfg, name)
    size = cfg["size"]
    hw = (size, size) if isinstance(size, int) else tuple(size)
    mismatched = []
    for image_name, (data, as_open_clip_sees_it) in awkward().items():
        pixels = prepare_image(data, pre.geometry, LIMITS)
        assert pixels.dtype == torch.uint8 and tuple(pixels.shape) == (3, *hw), image_name
        expected = reference(as_open_clip_sees_it)
        if not torch.equal(_normalized(pixels, pre), expected):
            mismatched.append(image_name)
    assert not mismatched, f"{name}: pixels differ from open_clip's for {mismatched}"


@pytest.mark.parametrize("name", sorted(PRETRAINED))
def test_jpeg_draft_decoding_stays_within_the_stated_tolerance(name: str) -> None:
    pre = preprocessing_from_cfg(CONFIGS[name], name)
    for w, h in [(1920, 1080), (1080, 1920)]:
        data = encode(photo(w, h), "JPEG", quality=90)
        exact = prepare_image(data, pre.geometry, LIMITS, draft=False)
        fast = prepare_image(data, pre.geometry, LIMITS)
        diff = (fast.to(torch.int16) - exact.to(torch.int16)).abs().float()
        assert diff.mean() < 1.5, (name, w, h)
        assert diff.flatten().quantile(0.99) <= 8, (name, w, h)


def test_a_tags_preprocessing_is_the_one_open_clip_builds_for_it() -> None:
    # the function clipserve loads tags with, against open_clip's own merge
    for tag_name, cfg in PRETRAINED.items():
        arch, tag = tag_name.split(":")
        ours = preprocessing_from_cfg(tag_preprocess_cfg(arch, tag, cfg["size"]), tag_name)
        assert ours.mean == tuple(cfg["mean"]) and ours.std == tuple(cfg["std"])
        assert ours.geometry == preprocessing_from_cfg(cfg, tag_name).geometry


def test_a_strip_resized_by_its_longest_side_keeps_a_pixel() -> None:
    # open_clip would ask PIL for a 0-pixel-wide image here and fail; clipserve pads a 1-pixel
    # column with the fill colour
    data = encode(Image.new("RGB", (1, 1000), (10, 200, 30)), "PNG")
    pixels = prepare_image(data, Geometry(224, 224, resize_mode="longest", fill=7), LIMITS)
    assert pixels.shape == (3, 224, 224)
    column = (224 - 1) // 2  # open_clip's left padding
    assert pixels[:, :, column].unique(dim=1).flatten().tolist() == [10, 200, 30]
    rest = torch.cat([pixels[:, :, :column], pixels[:, :, column + 1 :]], dim=2)
    assert bool((rest == 7).all())  # the fill colour everywhere else
