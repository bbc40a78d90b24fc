"""A sweep over open_clip's model families: each one served the way open_clip itself runs it.

For every family (ViT CLIP, ConvNeXt, EVA, SigLIP, SigLIP2, CLIPA, PE-Core, MobileCLIP,
MobileCLIP2, CoCa), the smallest of open_clip's configs under PARAM_CAP (counted on the meta
device, so picking costs nothing) is built offline with random weights and served through the
app in this process (the boundary under test is HTTP -> decode -> preprocess -> batch -> model;
in-process so open_clip's reference runs on the very same weights). Its /encode output must
match open_clip's own `encode_image(preprocess(img))` and `encode_text(tokenizer(text))`, with
open_clip's preprocess config for the architecture's pretrained tags, within fp32 tolerance.

HF tokenizers live only on the hub (SigLIP: T5 sentencepiece, SigLIP2: Gemma, CLIPA:
bert-base-uncased); they are made here with the same library (tests/support/hf_tokenizers.py)
and served from the cache with --offline. Not tested: the real hub tokenizer files; the
roberta/mT5/NLLB/XLM-R text towers (their configs need the hub); the largest configs (cap).
"""

from __future__ import annotations

import base64
import gc
import io
import re
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import open_clip
import pytest
import torch
from clipserve.http.app import create_app
from clipserve.settings import Settings
from litestar.testing import TestClient
from open_clip.tokenizer import HFTokenizer
from open_clip.transform import PreprocessCfg, image_transform_v2, merge_preprocess_dict
from PIL import Image

from tests.service.models.test_images import encode, photo
from tests.support.hf_tokenizers import cache_tokenizer

PARAM_CAP = 450_000_000  # fp32: 1.8 GB, the largest of the smallest (CLIPA-L is 414M)
FAMILIES: dict[str, Callable[[str], bool]] = {
    "ViT CLIP": lambda n: re.fullmatch(r"ViT-[A-Za-z]+-\d+(-alt)?", n) is not None,
    "ConvNeXt": lambda n: n.startswith("convnext"),
    "EVA": lambda n: n.startswith("EVA"),
    "SigLIP": lambda n: "SigLIP" in n and "SigLIP2" not in n,
    "SigLIP2": lambda n: "SigLIP2" in n,
    "CLIPA": lambda n: "CLIPA" in n,
    "PE-Core": lambda n: n.startswith("PE-Core"),
    "MobileCLIP": lambda n: n.startswith("MobileCLIP-"),
    "MobileCLIP2": lambda n: n.startswith("MobileCLIP2"),
    "CoCa": lambda n: n.startswith("coca"),
}
TEXTS = ["a photo of a dog", "A diagram of a neural network, drawn by hand!", ""]


def _params(arch: str) -> int:
    meta = torch.device("meta")  # shapes only: no memory, no init (0.1-2 s a config)
    with warnings.catch_warnings(), meta:
        warnings.simplefilter("ignore")
        model = open_clip.create_model(arch, pretrained=None, device=meta)
    return sum(p.numel() for p in model.parameters())


@pytest.fixture(scope="module")
def sweep() -> dict[str, str]:
    """family -> its smallest config under the cap (counted once, only when the sweep runs)."""
    picked: dict[str, tuple[int, str]] = {}
    for arch in open_clip.list_models():
        cfg = open_clip.get_model_config(arch) or {}
        if "hf_model_name" in cfg.get("text_cfg", {}):
            continue  # an HF text tower: its config is on the hub
        family = next((f for f, match in FAMILIES.items() if match(arch)), None)
        if family is None:
            continue
        n = _params(arch)
        if n <= PARAM_CAP and (family not in picked or n < picked[family][0]):
            picked[family] = (n, arch)
    return {family: arch for family, (_, arch) in picked.items()}


@pytest.mark.slow
def test_every_family_has_a_config_under_the_cap(sweep: dict[str, str]) -> None:
    assert set(sweep) == set(FAMILIES), f"families without a config under the cap: {sweep}"


def _reference_preprocess(arch: str, model: torch.nn.Module) -> PreprocessCfg:
    """open_clip's inference preprocess for `arch` as its pretrained tags ship it."""
    cfg = dict(model.visual.preprocess_cfg)
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if tags:
        cfg = merge_preprocess_dict(cfg, open_clip.get_pretrained_cfg(arch, tags[0]))
    return PreprocessCfg(**cfg)


def _wait_ready(client: TestClient, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = client.get("/readyz")
        if r.status_code == 200:
            return
        if "load failed" in r.json().get("detail", ""):
            raise AssertionError(r.json()["detail"])
        time.sleep(0.2)
    raise AssertionError("model not ready in time")


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_family_serves_as_open_clip_runs_it(
    family: str, sweep: dict[str, str], tmp_path: Path
) -> None:
    arch = sweep[family]
    repo = (open_clip.get_model_config(arch)["text_cfg"]).get("hf_tokenizer_name")
    snapshot = cache_tokenizer(tmp_path / "hub", repo, tmp_path / "work") if repo else None
    settings = Settings(
        model=(f"{arch}:random",),
        cache_dir=str(tmp_path / "hub"),
        offline=True,
        dtype="fp32",  # matched at fp32 tolerance (bf16's agreement: test_bf16_quality.py)
        compute_workers=1,
        max_wait_ms=1.0,
    )
    image = encode(photo(600, 200), "PNG")  # 3:1, where squash and crop part ways
    body = [{"text": t} for t in TEXTS] + [{"img_blob": base64.b64encode(image).decode()}]
    try:
        with TestClient(app=create_app(settings), timeout=600) as client:
            _wait_ready(client)
            r = client.post("/encode", json=body)
            assert r.status_code == 200, r.text
            info = client.get("/models").json()["models"][0]
            # the app holds its Engine as a dependency (litestar DI): the served model itself
            engine = client.app.dependencies["engine"].dependency()
            model = engine.models[settings.model[0]].model
            got = torch.tensor(r.json())
            pre = _reference_preprocess(arch, model)
            tokenizer = (
                HFTokenizer(
                    str(snapshot),
                    context_length=info["context_length"],
                    **open_clip.get_model_config(arch)["text_cfg"].get("tokenizer_kwargs", {}),
                )
                if snapshot
                else open_clip.get_tokenizer(arch)
            )
            with torch.inference_mode():
                pixels = image_transform_v2(pre, is_train=False)(Image.open(io.BytesIO(image)))
                expected = torch.cat(
                    [
                        model.encode_text(tokenizer(TEXTS)),
                        model.encode_image(pixels.unsqueeze(0)),
                    ]
                ).float()
        served = info["preprocess"]
        assert (served["resize_mode"], served["interpolation"]) == (
            pre.resize_mode,
            pre.interpolation,
        )
        assert served["mean"] == pytest.approx(list(pre.mean))
        assert served["std"] == pytest.approx(list(pre.std))
        assert info["tokenizer"]["kind"] == ("huggingface" if repo else "clip-bpe")
        assert info["objective"] == ("sigmoid" if "SigLIP" in arch else "softmax")
        scale = expected.abs().max()
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * float(scale))
    finally:
        # Engine.load froze everything it made out of the cyclic GC's sight (gc.freeze):
        # let this model's memory go before the next family loads.
        gc.unfreeze()
        gc.collect()
