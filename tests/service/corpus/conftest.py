"""Fixtures for `clipserve embed`: a generated folder of pictures (ten of them bad), and the
command run in this process or as its own process, with the tiny test model."""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq
import pytest
from clipserve.cli import main
from PIL import Image

from tests.support.server import MODEL_CONFIGS, TINY

# What every run here adds: the tiny model, offline, in fp32 (as the test server: the vectors
# are compared with its /encode), a small image-size cap for the oversized picture.
MODEL_ARGS = (
    "--model-config-dir", str(MODEL_CONFIGS), "--offline",
    "--dtype", "fp32", "--max-image-bytes", "150000",
)  # fmt: skip
GOOD = 300
# The ten bad pictures: name -> the words its row's error must contain.
BAD = {
    "bad/garbage.jpg": "not an image",
    "bad/text-as.png": "not an image",
    "bad/empty.png": "empty",
    "bad/truncated.jpg": "Truncated File Read",  # cut inside its headers
    "bad/truncated.png": "cannot decode",
    "bad/oversized.png": "over the 150000-byte cap",
    "bad/bomb.png": "pixel cap",
    "bad/icon.gif": "not an image",  # an .ico named .gif: a format the decoder refuses
    "bad/pdf.webp": "not an image",
    "bad/zero.bmp": "not an image",
}


def _encoded(im: Image.Image, fmt: str, **kw: Any) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kw)
    return buf.getvalue()


def make_pictures(root: Path) -> list[str]:
    """GOOD small pictures (PNG, JPEG, WebP; some in subfolders, one named without an
    extension) and the ten BAD ones, plus files that are not items; the items' ids, sorted."""
    rng = np.random.default_rng(0)
    ids = []
    for i in range(GOOD):
        w, h = 24 + i % 40, 20 + (i * 7) % 50
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        fmt, ext = [("PNG", "png"), ("JPEG", "jpg"), ("WEBP", "webp")][i % 3]
        name = f"set{i % 4}/pic{i:04d}.{ext}" if i != 7 else "noext/pic0007"  # found by content
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(_encoded(Image.fromarray(pixels), fmt))
        ids.append(name)
    jpeg = _encoded(Image.new("RGB", (64, 64), (9, 99, 199)), "JPEG")
    png = _encoded(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)), "PNG")
    noise = Image.fromarray(rng.integers(0, 256, (260, 260, 3), dtype=np.uint8))
    bad = {
        "bad/garbage.jpg": os.urandom(2000),
        "bad/text-as.png": b"just some text, not pixels\n" * 20,
        "bad/empty.png": b"",
        "bad/truncated.jpg": jpeg[: len(jpeg) // 2],
        "bad/truncated.png": png[: len(png) // 2],
        "bad/oversized.png": _encoded(noise, "PNG"),  # ~200 KB > --max-image-bytes
        "bad/bomb.png": _encoded(Image.new("1", (7000, 7000)), "PNG"),  # 49 Mpx > 40 Mpx cap
        "bad/icon.gif": _encoded(Image.new("RGB", (32, 32)), "ICO"),
        "bad/pdf.webp": b"%PDF-1.4\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<<>>\nendobj\n",
        "bad/zero.bmp": b"\0" * 100,
    }
    assert set(bad) == set(BAD)
    (root / "bad").mkdir()
    for name, data in bad.items():
        (root / name).write_bytes(data)
        ids.append(name)
    # not items: a text file, a hidden file, a file named as a list
    (root / "README").write_text("pictures for the embed tests\n")
    (root / ".DS_Store").write_bytes(png)
    (root / "set0" / "notes.txt").write_text("a note\n")
    return sorted(ids)


@pytest.fixture(scope="package")
def pictures(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """The generated folder and its items' ids (paths relative to it), sorted."""
    root = tmp_path_factory.mktemp("pictures")
    return root, make_pictures(root)


@dataclass
class Ran:
    """One `clipserve embed`: its exit code, JSON progress events and stderr."""

    code: int
    events: list[dict[str, Any]]
    stderr: str

    def event(self, name: str) -> dict[str, Any]:
        return next(e for e in self.events if e["event"] == name)


def embed(*args: str, model: str = TINY) -> Ran:
    """`clipserve embed ARGS` with the tiny model (or `model`), in this process (no torch
    import per run)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(["embed", *args, "--model", model, *MODEL_ARGS, "--progress", "lines"])
    events = [json.loads(line) for line in out.getvalue().splitlines() if line.startswith("{")]
    return Ran(code, events, err.getvalue())


def embed_command(*args: str) -> list[str]:
    """`clipserve embed ARGS` as a command line for a process of its own."""
    return [
        sys.executable,
        "-m",
        "clipserve.cli",
        "embed",
        *args,
        "--model",
        TINY,
        *MODEL_ARGS,
        "--progress",
        "lines",
    ]


def read_output(folder: Path) -> dict[str, Any]:
    """The published output: rows of every shard with a manifest, manifests, run.json."""
    manifests = {
        int(p.stem.split("-")[1]): json.loads(p.read_text())
        for p in sorted((folder / "manifest").glob("shard-*.json"))
    }
    rows: list[dict[str, Any]] = []
    for k in sorted(manifests):
        table = pq.read_table(folder / "shards" / f"shard-{k:05d}.parquet")
        rows += table.to_pylist()
    return {
        "manifests": manifests,
        "rows": rows,
        "run": json.loads((folder / "run.json").read_text()),
    }
