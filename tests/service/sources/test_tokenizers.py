"""A model's own Hugging Face tokenizer: fetched into the cache like weights, --offline honoured.

`Tiny-HFTok-T` (tests/support/model_configs) names an HF tokenizer repo the way SigLIP's
configs do; its files are made here (tests/support/hf_tokenizers.py) and put in a cache.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import open_clip
import pytest
import torch
from clipserve.sources import hub
from open_clip.tokenizer import HFTokenizer

from tests.support.hf_tokenizers import cache_tokenizer, put_in_hub_cache
from tests.support.server import MODEL_CONFIGS, Server, start_server

REPO = "clipserve-tests/tiny-unigram"
ARCH = "Tiny-HFTok-T"

open_clip.add_model_config(str(MODEL_CONFIGS))


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(a cache holding the tokenizer, the tokenizer's snapshot folder)."""
    root = tmp_path_factory.mktemp("hf-cache")
    return root, cache_tokenizer(root / "hub", REPO, root / "work")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    model = open_clip.create_model(ARCH, pretrained=None).eval()
    path = tmp_path_factory.mktemp("ckpt") / "tiny-hftok.pt"
    torch.save(model.state_dict(), path)
    return path, model


@pytest.fixture(scope="module")
def offline_server(
    cache: tuple[Path, Path], checkpoint: tuple[Path, torch.nn.Module]
) -> Iterator[Server]:
    srv = start_server(
        "--offline", "--cache-dir", str(cache[0] / "hub"), model=f"{ARCH}:{checkpoint[0]}"
    )
    yield srv
    srv.stop()


def test_fetch_tokenizer_offline_returns_the_cached_files(cache: tuple[Path, Path]) -> None:
    root, snapshot = cache
    folder = hub.fetch_tokenizer(REPO, cache_dir=str(root / "hub"), offline=True)
    assert folder == snapshot and (folder / "tokenizer_config.json").is_file()


def test_fetch_tokenizer_offline_names_the_missing_file_and_repo(tmp_path: Path) -> None:
    with pytest.raises(hub.HubFileMissing) as err:
        hub.fetch_tokenizer(REPO, cache_dir=str(tmp_path), offline=True)
    message = str(err.value)
    assert REPO in message and "tokenizer_config.json" in message and "--offline" in message
    assert str(tmp_path) in message


def test_a_cached_snapshot_without_a_vocabulary_is_refused(tmp_path: Path) -> None:

    only_config = tmp_path / "files"
    only_config.mkdir()
    (only_config / "tokenizer_config.json").write_text("{}")
    put_in_hub_cache(tmp_path / "hub", REPO, only_config)
    with pytest.raises(hub.HubFileMissing, match="no vocabulary"):
        hub.fetch_tokenizer(REPO, cache_dir=str(tmp_path / "hub"), offline=True)


@pytest.mark.slow
def test_serve_offline_without_the_tokenizer_stops_start_up_naming_it(
    tmp_path: Path, checkpoint: tuple[Path, torch.nn.Module]
) -> None:
    # no HF_HUB_OFFLINE here: --offline alone must keep clipserve from the network
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "clipserve.cli",
            "serve",
            "--model",
            f"{ARCH}:{checkpoint[0]}",
            "--model-config-dir",
            str(MODEL_CONFIGS),
            "--port",
            "0",
            "--offline",
            "--cache-dir",
            str(tmp_path),
        ],
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 1, proc.stderr
    assert f"tokenizer {REPO}: tokenizer_config.json is not in {tmp_path}" in proc.stderr
    assert "--offline forbids downloading it" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_cached_hf_tokenizer_serves_offline_and_embeds_as_open_clip(
    offline_server: Server, cache: tuple[Path, Path], checkpoint: tuple[Path, torch.nn.Module]
) -> None:
    _, snapshot = cache
    _, model = checkpoint
    texts = ["A photo of a Dog!", "a cat on a red sofa in the sun " * 8, ""]
    reference = HFTokenizer(str(snapshot), context_length=32, clean="canonicalize")
    with torch.no_grad():
        expected = model.encode_text(reference(texts))
    with offline_server.client() as c:
        info = c.get("/models").json()["models"][0]
        got = c.post("/encode", json=[{"text": t} for t in texts]).json()
        usage = c.post("/v1/embeddings", json={"input": texts[:1]}).json()["usage"]
    assert info["tokenizer"] == {"kind": "huggingface", "name": REPO, "context_length": 32}
    assert info["text_trimmed"] is False
    torch.testing.assert_close(torch.tensor(got), expected, atol=1e-4, rtol=1e-4)
    tokens = reference(texts[:1])
    assert usage["prompt_tokens"] == int((tokens != 0).sum()) > 2


def test_tokenizer_repo_names_what_a_download_step_must_fetch() -> None:
    from clipserve.models import parse_spec
    from clipserve.models.recipe import tokenizer_repo

    assert tokenizer_repo(parse_spec("ViT-B-16-SigLIP:webli")) == "timm/ViT-B-16-SigLIP"
    assert tokenizer_repo(parse_spec("ViT-L-14-CLIPA:datacomp1b")) == "bert-base-uncased"
    assert tokenizer_repo(parse_spec(f"{ARCH}:random")) == REPO
    assert tokenizer_repo(parse_spec("ViT-B-32:openai")) is None  # CLIP's BPE ships with open_clip
