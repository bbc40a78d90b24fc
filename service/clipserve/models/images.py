"""Decode inline image payloads and turn image bytes into CLIP-ready uint8 pixels, safely and fast.

`prepare_image` reproduces open_clip's inference preprocess (`image_transform_v2`) for the model's
own `Geometry`: its `resize_mode` (shortest side + center crop, longest side + pad, or squash),
interpolation (bicubic, bilinear), size (square or not) and fill colour. `x.float() / 255` then
`(x - mean) / std` on the model's device gives bit-identical input for an opaque RGB or grayscale
image, with these deliberate differences, each because open_clip's result would be wrong or unsafe:
- EXIF orientation is applied (a phone photo is embedded upright).
- Transparency is composited on white (as LAION's img2dataset does), not dropped to the
  colour hidden under transparent pixels (often black).
- Palette and 1-bit images are converted to RGB before resizing (open_clip resizes them with
  NEAREST); 16-bit images are scaled to 8 bits (open_clip clips them to white).
- JPEGs are decoded with DCT scaling (`Image.draft`) to the smallest size still >= the target:
  much faster, within a few grey levels of the full decode (tests/service/models/test_images.py).
- `shortest` only: images thinner than 1:`MAX_ASPECT` are center-cropped to that aspect before
  resizing, so a 1x5000 strip does not become a 224x1,120,000 intermediate; `longest` keeps at
  least one pixel of a strip's short side (open_clip would ask PIL for a 0-pixel image and fail).
Safety: only common raster formats are opened (no EPS/Ghostscript and other exotic decoders),
the pixel cap is checked from the header before any pixel is decoded, truncated files are
refused (PIL's LOAD_TRUNCATED_IMAGES stays False), and only the first frame of an animation is
decoded. The function is pure and thread-safe: it runs in the preprocessing thread pool.
"""

from __future__ import annotations

import contextlib
import io
import re
import warnings
from dataclasses import dataclass
from urllib.parse import unquote_to_bytes

import numpy as np
import pybase64
import torch
from PIL import Image, ImageOps, features

from clipserve.errors import InvalidInput, PayloadTooLarge

MAX_ASPECT = 16
# Formats browsers and cameras produce; everything else is refused before a decoder runs.
# (JPEG's opener also yields MPO, the multi-picture JPEG some cameras write.)
Image.init()  # register plugins now, not lazily from several pool threads at once
FORMATS = tuple(
    f
    for f in ("JPEG", "PNG", "GIF", "WEBP", "BMP", "TIFF", "AVIF")
    if f in Image.OPEN and (f != "AVIF" or features.check("avif"))
)
_DATA_URI = re.compile(r"data:(?P<meta>[^,]*?),(?P<payload>.*)", re.IGNORECASE | re.DOTALL)

# Our own pixel cap (ImageLimits.max_pixels, checked from the header) is the one that applies;
# PIL's process-wide warning above MAX_IMAGE_PIXELS would only add noise. PIL still raises
# DecompressionBombError above 2x MAX_IMAGE_PIXELS, which we report as PayloadTooLarge.
warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


RESIZE_MODES = ("shortest", "longest", "squash")
_FILTERS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
INTERPOLATIONS = tuple(_FILTERS)


@dataclass(frozen=True)
class Geometry:
    """How an image becomes the model's input (open_clip's size, resize_mode, interpolation)."""

    height: int
    width: int
    resize_mode: str = "shortest"
    interpolation: str = "bicubic"
    fill: int = 0  # the colour (grey level) `longest` pads with

    def __post_init__(self) -> None:
        if self.resize_mode not in RESIZE_MODES:
            raise ValueError(f"resize_mode {self.resize_mode!r} is not one of {RESIZE_MODES}")
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation {self.interpolation!r} is not one of {INTERPOLATIONS}")

    @classmethod
    def square(cls, size: int, **kw: object) -> Geometry:
        """A size x size geometry (CLIP's recipe unless told otherwise)."""
        return cls(size, size, **kw)  # type: ignore[arg-type]


@dataclass(frozen=True)
class ImageLimits:
    """Caps for one image: encoded bytes and decoded pixels (width x height)."""

    max_bytes: int = 20 * 2**20
    max_pixels: int = 40_000_000


def decode_base64(blob: str, limits: ImageLimits) -> bytes:
    """Strict standard base64 (padding required, no whitespace) -> bytes, under the byte cap."""
    if not blob:
        raise InvalidInput("empty base64 payload")
    size = len(blob) // 4 * 3 - blob[-2:].count("=")
    if size > limits.max_bytes:
        raise PayloadTooLarge(f"image is {size} bytes, over the {limits.max_bytes}-byte cap")
    try:
        # pybase64 (SIMD): 40x the standard library's speed, which took 1.4 ms of a request's
        # critical path for a 590 KB PNG. validate=True: the same strict alphabet and padding.
        return pybase64.b64decode(blob, validate=True)
    except ValueError as exc:  # binascii.Error, for a bad character or padding
        raise InvalidInput(f"not valid base64: {exc}") from exc


def is_data_uri(value: str) -> bool:
    """Whether an `img_uri` is a data: URI (schemes are case-insensitive) rather than a URL."""
    return value[:5].lower() == "data:"


def decode_data_uri(uri: str, limits: ImageLimits) -> bytes:
    """`data:[<mime>][;base64],<payload>` -> bytes (any mime: the decoder judges the bytes)."""
    match = _DATA_URI.fullmatch(uri)
    if match is None:
        raise InvalidInput("not a data: URI (expected data:[<mime>][;base64],<payload>)")
    params = [p.strip().lower() for p in match["meta"].split(";")]
    if "base64" in params[1:]:
        return decode_base64(match["payload"], limits)
    payload = match["payload"]
    if len(payload) // 3 > limits.max_bytes:  # each byte is at least 1, at most 3 chars (%xx)
        raise PayloadTooLarge(f"data: URI is over the {limits.max_bytes}-byte cap")
    data = unquote_to_bytes(payload)
    if len(data) > limits.max_bytes:
        raise PayloadTooLarge(f"image is {len(data)} bytes, over the {limits.max_bytes}-byte cap")
    if not data:
        raise InvalidInput("empty data: URI payload")
    return data


def prepare_image(
    data: bytes, geometry: Geometry, limits: ImageLimits, *, draft: bool = True
) -> torch.Tensor:
    """Image bytes -> uint8 tensor [3, height, width] on the CPU, resized as open_clip does."""
    if not data:
        raise InvalidInput("empty image")
    if len(data) > limits.max_bytes:
        raise PayloadTooLarge(f"image is {len(data)} bytes, over the {limits.max_bytes}-byte cap")
    try:
        im = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError as exc:  # PIL's own limit, far above ours by default
        raise PayloadTooLarge(f"image declares too many pixels ({_reason(exc)})") from exc
    except Image.UnidentifiedImageError as exc:
        raise InvalidInput(f"not an image, or not one of {', '.join(FORMATS)}") from exc
    except Exception as exc:  # a malformed header can fail in many ways inside a plugin
        raise InvalidInput(f"cannot read image header: {_reason(exc)}") from exc
    with im:
        width, height = im.size
        if width < 1 or height < 1:
            raise InvalidInput(f"image has no pixels ({width}x{height})")
        if width * height > limits.max_pixels:
            raise PayloadTooLarge(
                f"image is {width}x{height} pixels, over the {limits.max_pixels}-pixel cap"
            )
        try:
            if draft and im.format in ("JPEG", "MPO"):
                # DCT scaling: decode at 1/2, 1/4 or 1/8 size, still at least the target in both
                # directions (every resize mode then only shrinks it further)
                im.draft("RGB", (geometry.width, geometry.height))
            im.load()  # first frame only; raises on truncated data
            rgb = _to_rgb_or_l(_upright(im))
            pixels = _resize(rgb, geometry)
        except (PayloadTooLarge, InvalidInput):
            raise
        except Exception as exc:  # corrupt data surfaces as OSError, SyntaxError, ValueError...
            raise InvalidInput(f"cannot decode image: {_reason(exc)}") from exc
    if pixels.mode != "RGB":
        pixels = pixels.convert("RGB")
    # HWC -> CHW in numpy: torch's copy would use its intra-op thread pool, which contends with
    # the compute thread when many preprocessing threads call it (measured: 0.1 ms -> 3 ms).
    return torch.from_numpy(np.ascontiguousarray(np.asarray(pixels).transpose(2, 0, 1)))


def _upright(im: Image.Image) -> Image.Image:
    """Apply EXIF orientation; a broken EXIF block is ignored (the pixels are still fine)."""
    # Malformed EXIF must not reject a decodable image. In place: no copy when already upright.
    with contextlib.suppress(Exception):
        ImageOps.exif_transpose(im, in_place=True)
    return im


def _to_rgb_or_l(im: Image.Image) -> Image.Image:
    """Convert any mode to RGB or L (L stays single-channel until after the resize: cheaper)."""
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        # 16-bit samples: keep the top 8 bits (PIL's convert would clip everything >255 to white).
        wide = np.asarray(im).astype(np.int64)
        return Image.fromarray((np.clip(wide, 0, 65535) >> 8).astype(np.uint8), mode="L")
    if mode in ("RGB", "L") and "transparency" not in im.info:
        return im
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info:
        return _on_white(im.convert("RGBA"))
    if mode == "1":
        return im.convert("L")
    if mode == "F":
        return im.convert("L")  # floats are taken as 0..255 (clipped), as PIL does
    return im.convert("RGB")  # P, CMYK, YCbCr, LAB, HSV


def _on_white(rgba: Image.Image) -> Image.Image:
    """Composite an RGBA image over a white background."""
    out = Image.new("RGB", rgba.size, (255, 255, 255))
    out.paste(rgba, mask=rgba.getchannel("A"))
    return out


def _resize(im: Image.Image, g: Geometry) -> Image.Image:
    """open_clip's inference resize for `g` (torchvision on a PIL image), bit for bit."""
    flt = _FILTERS[g.interpolation]
    if g.resize_mode == "squash":
        return _resized(im, g.width, g.height, flt)
    if g.resize_mode == "longest":
        width, height = _keep_ratio(im.size, g, longest=True)
        return _crop_or_pad(_resized(im, width, height, flt), g, g.fill)
    im = _thin_strip_center(im)
    if g.height != g.width:
        # open_clip resizes to a non-square target with ResizeKeepRatio at its default, BICUBIC,
        # whatever the config's interpolation says; torchvision's CenterCrop pads with 0
        width, height = _keep_ratio(im.size, g, longest=False)
        return _crop_or_pad(_resized(im, width, height, Image.Resampling.BICUBIC), g, 0)
    return _resize_shortest_center_crop(im, g.height, flt)


def _resized(im: Image.Image, width: int, height: int, flt: Image.Resampling) -> Image.Image:
    return im if im.size == (width, height) else im.resize((width, height), flt)


def _thin_strip_center(im: Image.Image) -> Image.Image:
    """A strip thinner than 1:MAX_ASPECT cut to that aspect (only its center survives the crop)."""
    width, height = im.size
    short, long = min(width, height), max(width, height)
    if long <= short * MAX_ASPECT:
        return im
    keep = short * MAX_ASPECT
    cut = (long - keep) // 2
    return im.crop((cut, 0, cut + keep, height) if width > height else (0, cut, width, cut + keep))


def _keep_ratio(size: tuple[int, int], g: Geometry, *, longest: bool) -> tuple[int, int]:
    """open_clip's ResizeKeepRatio: scale so the longest (or shortest) side fits; (w, h)."""
    width, height = size
    ratio_h, ratio_w = height / g.height, width / g.width
    ratio = max(ratio_h, ratio_w) if longest else min(ratio_h, ratio_w)
    return max(1, round(width / ratio)), max(1, round(height / ratio))


def _crop_or_pad(im: Image.Image, g: Geometry, fill: int) -> Image.Image:
    """open_clip's center_crop_or_pad: pad with the fill colour where too small, then crop."""
    width, height = im.size
    if g.width > width or g.height > height:
        left, top = max(0, (g.width - width) // 2), max(0, (g.height - height) // 2)
        colour = fill if im.mode == "L" else (fill,) * 3
        canvas = Image.new(im.mode, (max(width, g.width), max(height, g.height)), colour)
        canvas.paste(im, (left, top))
        im = canvas
        width, height = im.size
        if (width, height) == (g.width, g.height):
            return im
    top = round((height - g.height) / 2.0)
    left = round((width - g.width) / 2.0)
    return im.crop((left, top, left + g.width, top + g.height))


def _resize_shortest_center_crop(im: Image.Image, size: int, flt: Image.Resampling) -> Image.Image:
    """torchvision's Resize(size) + CenterCrop(size) on a PIL image, bit for bit."""
    width, height = im.size
    short, long = min(width, height), max(width, height)
    new_long = int(size * long / short)  # torchvision's formula (floor)
    new_w, new_h = (size, new_long) if width <= height else (new_long, size)
    im = _resized(im, new_w, new_h, flt)
    # torchvision's CenterCrop rounds half offsets with Python's round (to even).
    top = round((new_h - size) / 2.0)
    left = round((new_w - size) / 2.0)
    return im.crop((left, top, left + size, top + size))


def _reason(exc: BaseException) -> str:
    """A short, client-safe reason from a decoder exception."""
    text = str(exc).strip() or type(exc).__name__
    return text[:200]
