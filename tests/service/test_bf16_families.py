"""bf16 per model family: every family of the model sweep meets auto's bar (cosine >= 0.999 per
vector, no zero-shot choice changed beyond a tie) through the served path, cast as auto casts.

Each family's config from the sweep's table (clipserve.bench.quality.FAMILIES) is made cheap
by cutting every tower that open_clip builds itself to 2 layers (timm image towers stay whole:
their size is the timm model's) and a hub tokenizer's vocabulary to 1,000 (the tokenizers made
here use fewer ids); random weights from load_model's fixed seed. Full-size figures:
`python -m clipserve.bench.quality` (docs/performance.md). A family found failing would be
listed in FAILS with what auto does for it.
"""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
from clipserve.bench.quality import FAMILIES, measure
from clipserve.models import load_model, parse_spec

from tests.service.hf_tokenizers import cache_tokenizer

FAILS: set[str] = set()  # none so far


def _cheap(arch: str, folder: Path) -> str:
    """A config like `arch`'s with 2-layer towers, registered as bf16-`arch`."""
    cfg = json.loads(json.dumps(open_clip.get_model_config(arch)))
    for tower in ("vision_cfg", "text_cfg", "multimodal_cfg"):
        if "layers" in cfg.get(tower, {}):
            cfg[tower]["layers"] = 2
    if "hf_tokenizer_name" in cfg["text_cfg"]:
        cfg["text_cfg"]["vocab_size"] = 1000
    name = f"bf16-{arch}"
    path = folder / f"{name}.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)
    return name


@pytest.mark.slow
@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "ViT CLIP (ViT-B-32)"])
def test_each_family_in_bf16_agrees_with_fp32_by_autos_bar(family: str, tmp_path: Path) -> None:
    arch = FAMILIES[family]
    repo = open_clip.get_model_config(arch)["text_cfg"].get("hf_tokenizer_name")
    if repo:
        cache_tokenizer(tmp_path / "hub", repo, tmp_path / "work")
    name = _cheap(arch, tmp_path)
    model = load_model(
        parse_spec(f"{name}:random"), device="cpu", cache_dir=str(tmp_path / "hub"), offline=True
    )
    quality = measure(model, images=8)
    assert model.precision == "bf16"  # measured after the cast auto makes
    figures = f"{family} ({arch}): {quality}"
    assert quality.passes == (family not in FAILS), figures
