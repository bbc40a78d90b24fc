"""bf16 per model family: every family of the model sweep meets auto's bar (cosine >= 0.999 per
vector, no zero-shot choice changed beyond a tie) through the served path, cast as auto casts.

Each family's config from the sweep's table (clipserve.bench.quality.FAMILIES) is made cheap
by cutting every tower that open_clip builds itself to 2 layers (timm image towers stay whole:
their size is the timm model's) and a hub tokenizer's vocabulary to 1,000 (the tokenizers made
here use fewer ids); random weights from load_model's fixed seed. Full-size figures:
`python -m clipserve.bench.quality` (docs/performance.md). A family that missed the bar there
(PE-Core: min image cosine 0.992 over the 32 images; its 8 here can pass) is in the self-check's
UNFIT list: auto keeps it in fp32 and says so.
"""

from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
from clipserve.bench.quality import FAMILIES, measure
from clipserve.models import ClipModel, cpu, load_model, parse_spec
from clipserve.models.precision import UNFIT

from tests.support.hf_tokenizers import cache_tokenizer

WITH_UNITS = cpu.judge(("AVX512-BF16",), True, "2.14.1")


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


def _load(family: str, folder: Path, dtype: str) -> ClipModel:
    """The family's cheap model, its hub tokenizer (if any) made and cached here."""
    arch = FAMILIES[family]
    repo = open_clip.get_model_config(arch)["text_cfg"].get("hf_tokenizer_name")
    if repo:
        cache_tokenizer(folder / "hub", repo, folder / "work")
    spec = parse_spec(f"{_cheap(arch, folder)}:random")
    return load_model(spec, device="cpu", dtype=dtype, cache_dir=str(folder / "hub"), offline=True)


FITTING = [f for f in FAMILIES if f != "ViT CLIP (ViT-B-32)" and "PE-Core" not in f]


@pytest.mark.slow
@pytest.mark.parametrize("family", FITTING)
def test_each_family_in_bf16_agrees_with_fp32_by_autos_bar(family: str, tmp_path: Path) -> None:
    model = _load(family, tmp_path, "fp32")
    quality = measure(model, images=8)
    assert model.precision == "bf16"  # measured after the cast auto makes
    assert quality.passes, f"{family} ({FAMILIES[family]}): {quality}"


def test_auto_keeps_a_family_that_missed_the_bar_in_fp32_and_says_so(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    assert set(UNFIT) == {"PE-Core"}
    monkeypatch.setattr(cpu, "bf16_support", lambda: WITH_UNITS)  # a CPU with bf16 units
    model = _load("PE-Core", tmp_path, "auto")
    assert model.precision == "fp32"
    assert model.dtype_reason == f"auto on cpu: {WITH_UNITS.reason}, but fp32: {UNFIT['PE-Core']}"
