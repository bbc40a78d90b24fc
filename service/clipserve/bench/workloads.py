"""What the bench sends: named workloads and their /encode bodies, with realistic texts and images.

Bodies are built and JSON-encoded before the clock starts, so the load generator spends its
CPU on HTTP alone (it usually shares the machine with the server it measures).
"""

from __future__ import annotations

import base64
import io
import json
import random

# Captions of realistic length (8 to 20 tokens), like search queries and alt texts.
_SUBJECTS = (
    "a dog",
    "two cats",
    "an old red car",
    "a child with a kite",
    "a plate of pasta",
    "a mountain lake",
    "a city street at night",
    "a wooden chair",
    "a surfer on a wave",
)
_SCENES = (
    "in the snow",
    "on a sunny beach",
    "next to a window",
    "in a busy market",
    "under a cloudy sky",
    "on a kitchen table",
    "in a forest clearing at dawn",
)

# name -> (modality, image format, (width, height)); text workloads have no image.
WORKLOADS: dict[str, tuple[str, str | None, tuple[int, int] | None]] = {
    "text": ("text", None, None),
    "jpeg224": ("image", "JPEG", (224, 224)),
    "png224": ("image", "PNG", (224, 224)),
    "jpeg640": ("image", "JPEG", (640, 480)),
    "png640": ("image", "PNG", (640, 480)),
    "jpeg1080": ("image", "JPEG", (1920, 1080)),
    "mixed": ("mixed", "JPEG", (224, 224)),
}


def captions(n: int, seed: int = 0) -> list[str]:
    """`n` distinct captions of realistic length."""
    rng = random.Random(seed)
    return [
        f"a photo of {rng.choice(_SUBJECTS)} {rng.choice(_SCENES)}, number {i}" for i in range(n)
    ]


def photo_bytes(fmt: str, size: tuple[int, int], seed: int = 0) -> bytes:
    """A photo-like image (smooth colour fields plus grain), so JPEG/PNG sizes are realistic."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    coarse = rng.integers(0, 256, (max(h // 32, 2), max(w // 32, 2), 3), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BICUBIC))
    grain = rng.normal(0, 6, (h, w, 3))
    pixels = np.clip(smooth + grain, 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buf.getvalue()


def request_bodies(workload: str, items: int, count: int = 64) -> list[bytes]:
    """`count` distinct /encode bodies of `items` items each, JSON-encoded up front."""
    modality, fmt, size = WORKLOADS[workload]
    texts = captions(count * items)
    blobs = (
        [base64.b64encode(photo_bytes(fmt, size, seed=i)).decode() for i in range(8)]
        if fmt and size
        else []
    )
    bodies = []
    for r in range(count):
        batch = []
        for i in range(items):
            k = r * items + i
            as_text = modality == "text" or (modality == "mixed" and k % 2 == 0)
            batch.append({"text": texts[k]} if as_text else {"img_blob": blobs[k % len(blobs)]})
        bodies.append(json.dumps(batch).encode())
    return bodies
