"""Model specs and loading through open_clip, with weights made here (no downloads)."""

from __future__ import annotations

import hashlib
import io
import subprocess
import sys
from pathlib import Path

import open_clip
import pytest
import torch
from clipserve import models
from clipserve.models import ModelLoadError, load_model, parse_spec
from clipserve.models.load import _quick_gelu_for

from tests.support.server import MODEL_CONFIGS, TINY

models.add_model_configs(str(MODEL_CONFIGS))


@pytest.fixture(scope="module")
def tiny() -> models.ClipModel:
    return load_model(parse_spec(TINY))


@pytest.mark.parametrize(
    ("raw", "arch", "tag", "kind"),
    [
        ("ViT-B-32:openai", "ViT-B-32", "openai", "pretrained"),
        ("ViT-B-32:random", "ViT-B-32", "random", "random"),
        ("ViT-B-32:/models/ckpt.pt", "ViT-B-32", "/models/ckpt.pt", "checkpoint"),
        ("ViT-B-32:weights.safetensors", "ViT-B-32", "weights.safetensors", "checkpoint"),
        ("hf-hub:timm/ViT-B-16-SigLIP", "hf-hub:timm/ViT-B-16-SigLIP", None, "schema"),
    ],
)
def test_specs_parse_into_architecture_and_tag(raw, arch, tag, kind):
    spec = parse_spec(raw)
    assert (spec.arch, spec.tag, spec.kind) == (arch, tag, kind)


@pytest.mark.parametrize("raw", ["ViT-B-32", "ViT-B-32:", ":openai", ""])
def test_malformed_specs_are_refused_with_the_expected_form(raw):
    with pytest.raises(ValueError, match="ARCH:TAG"):
        parse_spec(raw)


def test_batch_trimmed_text_encoder_equals_the_full_77_token_encoder(tiny):
    texts = ["a", "a photo of a dog on a skateboard in the park", "", "x " * 100]
    tokens = tiny.tokenize(texts)
    trimmed = tiny.encode_text(tokens, trim=True)
    full = tiny.encode_text(tokens, trim=False)
    reference = tiny.model.encode_text(tokens)  # open_clip's own encoder, untouched
    torch.testing.assert_close(trimmed, full, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(full, reference.float(), atol=0, rtol=0)
    # and trimming really happened: a short batch runs on fewer positions
    assert int((tiny.tokenize(["a"]) != 0).sum()) == 3


def test_image_encoder_normalizes_uint8_like_open_clips_preprocess(tiny):
    pixels = torch.randint(0, 256, (2, 3, 224, 224), dtype=torch.uint8)
    mean = torch.tensor(open_clip.OPENAI_DATASET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(open_clip.OPENAI_DATASET_STD).view(1, 3, 1, 1)
    reference = tiny.model.encode_image((pixels.float() / 255 - mean) / std)
    torch.testing.assert_close(tiny.encode_image(pixels), reference, atol=1e-4, rtol=1e-4)


def in_hub_cache(cache: Path, repo: str, name: str, data: bytes) -> None:
    """Put a file where the hub's cache layout keeps it (blob, snapshot link, refs/main)."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    blob = folder / "blobs" / hashlib.sha256(data).hexdigest()
    blob.parent.mkdir(parents=True)
    blob.write_bytes(data)
    commit = "c" * 40
    (folder / "snapshots" / commit).mkdir(parents=True)
    (folder / "snapshots" / commit / name).symlink_to(f"../../blobs/{blob.name}")
    (folder / "refs").mkdir()
    (folder / "refs" / "main").write_text(commit)


def test_openai_tags_load_with_quick_gelu(tmp_path):
    # The hub is unreachable here: stand in for the download with a checkpoint saved from a
    # QuickGELU ViT-B-32 in the cache, so the real loading path (strict state-dict load) runs.
    src = open_clip.create_model("ViT-B-32", pretrained=None, force_quick_gelu=True)
    buf = io.BytesIO()
    torch.save(src.state_dict(), buf)
    repo = "timm/vit_base_patch32_clip_224.openai"
    in_hub_cache(tmp_path, repo, "open_clip_pytorch_model.bin", buf.getvalue())
    model = load_model(parse_spec("ViT-B-32:openai"), cache_dir=str(tmp_path), offline=True)
    acts = {type(m).__name__ for m in model.model.modules()}
    assert model.quick_gelu and "QuickGELU" in acts and "GELU" not in acts
    tokens = model.tokenize(["a dog"])
    torch.testing.assert_close(model.encode_text(tokens), src.eval().encode_text(tokens))
    # a tag trained with plain GELU does not get it
    assert not _quick_gelu_for(parse_spec("ViT-B-32:laion2b_s34b_b79k"))
    assert _quick_gelu_for(parse_spec("ViT-B-32:laion400m_e32"))


def test_a_checkpoint_file_loads_its_weights(tmp_path):
    src = open_clip.create_model("Tiny-ViT-T", pretrained=None).eval()
    ckpt = tmp_path / "tiny.pt"
    torch.save({"state_dict": src.state_dict()}, ckpt)
    model = load_model(parse_spec(f"Tiny-ViT-T:{ckpt}"))
    tokens = model.tokenize(["a cat"])
    torch.testing.assert_close(model.encode_text(tokens), src.encode_text(tokens))
    assert model.info()["random_weights"] is False


@pytest.mark.parametrize(
    ("raw", "words"),
    [
        ("Tiny-ViT-T:/no/such/file.pt", ["does not exist"]),
        ("ViT-B-32:not-a-tag", ["unknown pretrained tag", "openai"]),
        ("ViT-Nope-99:random", ["unknown architecture"]),
    ],
)
def test_load_errors_say_what_is_wrong(raw, words):
    with pytest.raises(ModelLoadError) as err:
        load_model(parse_spec(raw))
    for w in words:
        assert w in str(err.value)


def test_half_precision_is_refused_on_cpu():
    with pytest.raises(ModelLoadError, match="not supported on CPU"):
        load_model(parse_spec(TINY), device="cpu", dtype="fp16")


@pytest.mark.slow
def test_offline_download_failure_stops_startup_with_a_clear_message(tmp_path):
    # HF_HUB_OFFLINE makes the real hub client fail fast, as an air-gapped node would.
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "clipserve.cli",
            "serve",
            "--model",
            "ViT-B-32:openai",
            "--port",
            "0",
            "--cache-dir",
            str(tmp_path),
        ],
        env={"HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1
    err = proc.stderr
    assert "start-up failed: ViT-B-32:openai" in err
    assert "ViT-B-32:/path/to/ckpt.pt" in err and "ViT-B-32:random" in err
    assert "Traceback" not in err


def test_loaded_models_are_out_of_the_cyclic_gcs_sight():
    """After load the models sit in the permanent generation: a full collection, which held the
    GIL for 180 ms walking them, no longer does (in a subprocess: freezing is process-wide)."""
    code = f"""
import gc
from clipserve.engine.engine import Engine
from clipserve.metrics import Metrics
from clipserve.models import add_model_configs, parse_spec
from clipserve.settings import Settings
add_model_configs({str(MODEL_CONFIGS)!r})
emb = Engine(Settings(model=({TINY!r},)), [parse_spec({TINY!r})], Metrics())
emb.load()
module = next(iter(emb.models.values())).model
tracked = {{id(o) for o in gc.get_objects()}}
print(gc.get_freeze_count() > 0, id(module) in tracked, id(module.visual) in tracked)
emb.stop()
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    ).stdout.split()
    assert out == ["True", "False", "False"]
