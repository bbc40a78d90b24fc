"""images.py: equality with open_clip's preprocess, hostile and unusual images, inline payloads.

Every image here is a real file written by PIL in the test.
"""

from __future__ import annotations

import base64
import functools
import importlib
import io
import pkgutil
import struct
import zlib
from concurrent.futures import ThreadPoolExecutor

import clipserve
import numpy as np
import open_clip
import pytest
import torch
from clipserve.errors import InvalidInput, PayloadTooLarge
from clipserve.models.images import (
    Geometry,
    ImageLimits,
    decode_base64,
    decode_data_uri,
    is_data_uri,
    prepare_image,
)
from PIL import Image, ImageDraw, ImageFile, ImageFilter

LIMITS = ImageLimits()
SQ224 = Geometry.square(224)  # CLIP's recipe: shortest side, bicubic, center crop
WHITE, RED, BLUE = (255, 255, 255), (220, 20, 20), (20, 20, 220)


@pytest.fixture(scope="module")
def preprocess() -> object:
    """open_clip's own inference preprocess for ViT-B-32 (random weights: only the transform)."""
    _, _, pre = open_clip.create_model_and_transforms("ViT-B-32", pretrained=None)
    return pre


def encode(im: Image.Image, fmt: str, **kw: object) -> bytes:
    """Save an image to bytes in `fmt`."""
    if fmt == "PNG":
        kw.setdefault("compress_level", 1)  # fast to write; decoding is the same
    buf = io.BytesIO()
    im.save(buf, fmt, **kw)
    return buf.getvalue()


@functools.lru_cache(maxsize=64)
def photo(width: int, height: int, seed: int = 0) -> Image.Image:
    """A photo-like RGB image: smooth gradients, shapes, soft edges, sensor noise."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    base = np.stack(
        [128 + 100 * np.sin(6 * x + 1), 128 + 100 * np.cos(5 * y), 128 + 80 * np.sin(4 * (x + y))],
        axis=-1,
    )
    im = Image.fromarray(base.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(40):
        cx, cy = int(rng.integers(0, width)), int(rng.integers(0, height))
        r = int(rng.integers(2, max(3, max(width, height) // 6)))
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=tuple(rng.integers(0, 256, 3).tolist()))
    noisy = np.asarray(im.filter(ImageFilter.GaussianBlur(1.5))).astype(int)
    noisy += rng.integers(-6, 7, noisy.shape)
    return Image.fromarray(noisy.clip(0, 255).astype(np.uint8))


def normalize(pixels: torch.Tensor, preprocess: object) -> torch.Tensor:
    """What the model does on its device: uint8 -> /255 -> (x - mean) / std."""
    norm = preprocess.transforms[-1]  # type: ignore[attr-defined]
    mean = torch.tensor(norm.mean).view(3, 1, 1)
    std = torch.tensor(norm.std).view(3, 1, 1)
    return (pixels.float() / 255 - mean) / std


def solid(t: torch.Tensor) -> tuple[int, ...]:
    """The colour of a uniform image (asserts it is uniform)."""
    flat = t.reshape(3, -1)
    assert bool((flat == flat[:, :1]).all()), "image is not uniform"
    return tuple(flat[:, 0].tolist())


def close(t: torch.Tensor, color: tuple[int, int, int], tol: int = 2) -> bool:
    """Whether every pixel is within `tol` grey levels of `color`."""
    ref = torch.tensor(color, dtype=torch.int16).view(3, 1, 1)
    return bool(((t.to(torch.int16) - ref).abs() <= tol).all())


# -- equality with open_clip -------------------------------------------------------------------


@pytest.mark.parametrize(
    "size",
    # (227, 224) and (224, 231): crop offsets 1.5 and 3.5, where round-half-even matters.
    [(224, 224), (640, 480), (480, 640), (300, 225), (227, 224), (224, 231), (1, 1), (7, 90)],
)
@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_png_equals_open_clip_preprocess_bit_for_bit(
    preprocess: object, size: tuple[int, int], mode: str
) -> None:
    data = encode(photo(*size).convert(mode), "PNG")
    expected = preprocess(Image.open(io.BytesIO(data)))  # type: ignore[operator]
    pixels = prepare_image(data, SQ224, LIMITS)
    assert pixels.dtype == torch.uint8
    assert pixels.shape == (3, 224, 224)
    assert torch.equal(normalize(pixels, preprocess), expected)


@pytest.mark.parametrize("image_size", [256, 336])
def test_other_square_sizes_equal_open_clip_too(image_size: int) -> None:
    pre = open_clip.image_transform(image_size, is_train=False)
    data = encode(photo(500, 375), "PNG")
    pixels = prepare_image(data, Geometry.square(image_size), LIMITS)
    assert torch.equal(normalize(pixels, pre), pre(Image.open(io.BytesIO(data))))


@pytest.mark.parametrize("size", [(640, 480), (1920, 1080), (1080, 1920)])
def test_jpeg_with_draft_is_close_to_open_clip(preprocess: object, size: tuple[int, int]) -> None:
    """DCT-domain downscaling: mean error under 1.5 grey levels, 99% of values within 8."""
    data = encode(photo(*size), "JPEG", quality=90)
    expected = preprocess(Image.open(io.BytesIO(data)))  # type: ignore[operator]
    exact = prepare_image(data, SQ224, LIMITS, draft=False)
    assert torch.equal(normalize(exact, preprocess), expected)
    fast = prepare_image(data, SQ224, LIMITS)
    diff = (fast.to(torch.int16) - exact.to(torch.int16)).abs().float()
    assert diff.mean() < 1.5
    assert diff.flatten().quantile(0.99) <= 8


# -- modes, orientation, frames, shapes -----------------------------------------------------------


def test_exif_orientation_is_applied() -> None:
    """Stored landscape red|blue, orientation 6 (rotate 90 CW): displayed top red, bottom blue."""
    im = Image.new("RGB", (60, 30), RED)
    im.paste(BLUE, (30, 0, 60, 30))
    exif = Image.Exif()
    exif[0x0112] = 6
    for fmt in ("PNG", "JPEG"):
        pixels = prepare_image(encode(im, fmt, exif=exif, quality=95), SQ224, LIMITS)
        assert close(pixels[:, :100, :], RED, tol=12), fmt
        assert close(pixels[:, 124:, :], BLUE, tol=12), fmt


def test_transparency_is_composited_on_white() -> None:
    clear = Image.new("RGBA", (32, 32), (0, 0, 0, 0))
    assert solid(prepare_image(encode(clear, "PNG"), SQ224, LIMITS)) == WHITE
    half_red = Image.new("RGBA", (32, 32), (255, 0, 0, 128))
    assert close(prepare_image(encode(half_red, "PNG"), SQ224, LIMITS), (255, 127, 127), tol=1)
    clear_gray = Image.new("LA", (32, 32), (0, 0))
    assert solid(prepare_image(encode(clear_gray, "PNG"), SQ224, LIMITS)) == WHITE


def test_an_opaque_rgba_image_equals_its_rgb_version() -> None:
    rgb = photo(300, 200)
    assert torch.equal(
        prepare_image(encode(rgb.convert("RGBA"), "PNG"), SQ224, LIMITS),
        prepare_image(encode(rgb, "PNG"), SQ224, LIMITS),
    )


def test_a_palette_image_with_a_transparent_index_turns_white_there() -> None:
    im = Image.new("P", (40, 40), 1)
    im.putpalette([0, 0, 0, *RED] + [0] * 762)
    im.paste(0, (0, 0, 40, 20))  # top half: index 0, declared transparent
    pixels = prepare_image(encode(im, "PNG", transparency=0), SQ224, LIMITS)
    assert close(pixels[:, :100, :], WHITE, tol=0)
    assert close(pixels[:, 124:, :], RED, tol=0)


def test_a_palette_image_is_resized_in_rgb_not_nearest() -> None:
    rgb = photo(300, 200)
    pal = rgb.convert("P")
    assert torch.equal(
        prepare_image(encode(pal, "PNG"), SQ224, LIMITS),
        prepare_image(encode(pal.convert("RGB"), "PNG"), SQ224, LIMITS),
    )


def test_sixteen_bit_grayscale_keeps_its_top_eight_bits() -> None:
    gray8 = np.asarray(photo(300, 200).convert("L"))
    wide = Image.fromarray(gray8.astype(np.uint16) * 257)  # 0..65535, mode I;16
    assert wide.mode == "I;16"
    expected = prepare_image(encode(Image.fromarray(gray8), "PNG"), SQ224, LIMITS)
    for fmt in ("PNG", "TIFF"):
        assert torch.equal(prepare_image(encode(wide, fmt), SQ224, LIMITS), expected), fmt


def test_grayscale_gives_three_equal_channels() -> None:
    pixels = prepare_image(encode(photo(100, 80).convert("L"), "PNG"), SQ224, LIMITS)
    assert torch.equal(pixels[0], pixels[1])
    assert torch.equal(pixels[1], pixels[2])


def test_cmyk_jpeg_is_converted_to_rgb() -> None:
    cmyk = Image.new("RGB", (64, 64), RED).convert("CMYK")
    assert close(prepare_image(encode(cmyk, "JPEG", quality=95), SQ224, LIMITS), RED, tol=6)


def test_one_bit_image_becomes_black_and_white() -> None:
    im = Image.new("1", (50, 50), 1)
    assert solid(prepare_image(encode(im, "PNG"), SQ224, LIMITS)) == WHITE


@pytest.mark.parametrize("fmt", ["GIF", "WEBP", "PNG"])
def test_animations_use_the_first_frame(fmt: str) -> None:
    frames = [Image.new("RGB", (48, 48), c) for c in (RED, BLUE, (20, 220, 20))]
    kw: dict[str, object] = {"lossless": True} if fmt == "WEBP" else {}
    data = encode(frames[0], fmt, save_all=True, append_images=frames[1:], duration=50, **kw)
    assert Image.open(io.BytesIO(data)).n_frames == 3
    assert close(prepare_image(data, SQ224, LIMITS), RED, tol=3)


@pytest.mark.parametrize("size", [(1, 1), (1, 5000), (5000, 1), (2, 3), (10000, 3)])
def test_tiny_and_very_thin_images_work(size: tuple[int, int]) -> None:
    pixels = prepare_image(encode(Image.new("RGB", size, BLUE), "PNG"), SQ224, LIMITS)
    assert solid(pixels) == BLUE


def test_a_thin_strip_keeps_its_center() -> None:
    """1x5000: top third red, middle blue, bottom red; the 224x224 crop sees only blue."""
    im = Image.new("RGB", (1, 5000), RED)
    im.paste(BLUE, (0, 1666, 1, 3334))
    assert solid(prepare_image(encode(im, "PNG"), SQ224, LIMITS)) == BLUE


@pytest.mark.parametrize("fmt", ["BMP", "TIFF", "WEBP"])
def test_other_common_formats_decode(fmt: str) -> None:
    pixels = prepare_image(
        encode(Image.new("RGB", (64, 40), RED), fmt, lossless=True), SQ224, LIMITS
    )
    assert close(pixels, RED, tol=0)


# -- hostile input ------------------------------------------------------------------------------


def png_declaring(width: int, height: int) -> bytes:
    """A tiny real PNG whose header claims width x height (a decompression-bomb shape)."""
    data = bytearray(encode(Image.new("RGB", (1, 1)), "PNG"))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def test_a_header_over_the_pixel_cap_is_refused_before_decoding() -> None:
    data = png_declaring(8000, 8000)  # 64 M pixels: over our cap, under PIL's own
    assert len(data) < 100
    with pytest.raises(PayloadTooLarge, match="8000x8000 pixels"):
        prepare_image(data, SQ224, LIMITS)


def test_a_50000_square_bomb_is_refused_from_its_header() -> None:
    with pytest.raises(PayloadTooLarge):
        prepare_image(png_declaring(50000, 50000), SQ224, LIMITS)


def test_the_pixel_cap_is_configurable() -> None:
    data = encode(Image.new("RGB", (20, 20)), "PNG")
    with pytest.raises(PayloadTooLarge, match="over the 399-pixel cap"):
        prepare_image(data, SQ224, ImageLimits(max_pixels=399))
    assert prepare_image(data, SQ224, ImageLimits(max_pixels=400)).shape == (3, 224, 224)


def test_the_byte_cap_applies_to_image_bytes() -> None:
    data = encode(photo(64, 64), "PNG")
    with pytest.raises(PayloadTooLarge, match="byte cap"):
        prepare_image(data, SQ224, ImageLimits(max_bytes=len(data) - 1))


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "GIF", "WEBP"])
@pytest.mark.parametrize("draft", [True, False])
def test_truncated_files_are_refused(fmt: str, draft: bool) -> None:
    data = encode(photo(256, 256), fmt)
    with pytest.raises(InvalidInput, match=r"cannot (decode|read)"):
        prepare_image(data[: len(data) // 2], SQ224, LIMITS, draft=draft)


def test_a_png_with_a_corrupt_chunk_is_refused() -> None:
    data = bytearray(encode(photo(64, 64), "PNG"))
    data[60] ^= 0xFF  # inside the first IDAT: its CRC no longer matches
    with pytest.raises(InvalidInput):
        prepare_image(bytes(data), SQ224, LIMITS)


def test_truncated_images_stay_refused_after_importing_the_whole_service() -> None:
    for module in pkgutil.iter_modules(clipserve.__path__):
        importlib.import_module(f"clipserve.{module.name}")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"hello, world",
        b"<html><body>not found</body></html>",
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n",  # EPS: never decoded
        b"\x89PNG\r\n\x1a\n",  # a signature and nothing else
        b"\xff\xd8\xff",  # a JPEG start and nothing else
        bytes(range(256)) * 4,
    ],
)
def test_bytes_that_are_not_an_image_are_invalid_input(data: bytes) -> None:
    with pytest.raises(InvalidInput) as info:
        prepare_image(data, SQ224, LIMITS)
    assert not info.value.message.startswith("items[")  # the caller adds the item prefix


def test_preparing_is_thread_safe() -> None:
    blobs = [encode(photo(200 + 37 * i, 150 + 11 * i, seed=i), "JPEG") for i in range(8)] * 4
    sequential = [prepare_image(b, SQ224, LIMITS) for b in blobs]
    with ThreadPoolExecutor(max_workers=8) as pool:
        parallel = list(pool.map(lambda b: prepare_image(b, SQ224, LIMITS), blobs))
    assert all(torch.equal(a, b) for a, b in zip(sequential, parallel, strict=True))


# -- base64 and data: URIs ----------------------------------------------------------------------


def test_base64_round_trips() -> None:
    data = encode(photo(16, 16), "PNG")
    assert decode_base64(base64.b64encode(data).decode(), LIMITS) == data


@pytest.mark.parametrize(
    "blob",
    ["", "not base64!", "aGVsbG8", "aGVs bG8=", "aGVsbG8=\n", "aGVsbG8=aGVs", "aGVs-G8_", "é"],
)
def test_base64_is_strict(blob: str) -> None:
    with pytest.raises(InvalidInput):
        decode_base64(blob, LIMITS)


def test_base64_over_the_byte_cap_is_refused_before_decoding() -> None:
    blob = "A" * 4000  # 3000 bytes once decoded
    with pytest.raises(PayloadTooLarge, match="3000 bytes"):
        decode_base64(blob, ImageLimits(max_bytes=2999))
    assert len(decode_base64(blob, ImageLimits(max_bytes=3000))) == 3000


def test_data_uris_decode_base64_and_percent_encoding() -> None:
    data = encode(photo(16, 16), "PNG")
    b64 = base64.b64encode(data).decode()
    assert decode_data_uri(f"data:image/png;base64,{b64}", LIMITS) == data
    assert decode_data_uri(f"DATA:IMAGE/PNG;BASE64,{b64}", LIMITS) == data
    assert decode_data_uri(f"data:;base64,{b64}", LIMITS) == data
    assert decode_data_uri("data:application/octet-stream,%89PNG%0D%0A", LIMITS) == b"\x89PNG\r\n"
    assert prepare_image(
        decode_data_uri(f"data:image/png;base64,{b64}", LIMITS), SQ224, LIMITS
    ).shape


def test_data_uri_detection_ignores_case() -> None:
    assert is_data_uri("data:,x") and is_data_uri("DATA:image/png;base64,AAAA")
    assert not is_data_uri("https://example.com/data:x") and not is_data_uri("dat")


@pytest.mark.parametrize(
    "uri",
    ["data:image/png;base64", "image/png;base64,AAAA", "data:,", "data:image/png;base64,%%%"],
)
def test_malformed_data_uris_are_invalid_input(uri: str) -> None:
    with pytest.raises(InvalidInput):
        decode_data_uri(uri, LIMITS)


def test_data_uris_over_the_byte_cap_are_refused() -> None:
    with pytest.raises(PayloadTooLarge):
        decode_data_uri("data:image/png;base64," + "A" * 4000, ImageLimits(max_bytes=100))
    with pytest.raises(PayloadTooLarge):
        decode_data_uri("data:image/png," + "A" * 400, ImageLimits(max_bytes=100))
