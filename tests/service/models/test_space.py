"""The embedding space's digest (X-Clip-Space, /models): equal for the same weights,
preprocessing and tokenizer, different when any of them changes, `random:` for random weights.

Checkpoints are the tiny architecture's random-init weights, saved here with torch.save (and
safetensors for `local-dir:` folders); real server processes load them.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import torch
from clipserve.models.recipe import TokenizerInfo
from clipserve.models.space import file_sha256, hub_revision, tokenizer_identity
from clipserve_operator.spaces import reported_space
from safetensors.torch import save_file

from tests.support.checkpoints import ARCH, TINY_CFG, tiny_state
from tests.support.server import TINY, Server, start_server


def local_dir(path: Path, weights: dict[str, torch.Tensor], mean: float) -> Path:
    """A local-dir: model: the tiny config, these weights, and its own preprocessing."""
    path.mkdir()
    preprocess = {"mean": [mean] * 3, "std": [0.5] * 3}
    config = {"model_cfg": TINY_CFG, "preprocess_cfg": preprocess}
    (path / "open_clip_config.json").write_text(json.dumps(config))
    save_file(weights, path / "open_clip_model.safetensors")
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("spaces")
    weights = tiny_state(seed=1)
    for name in ("a", "copy", "replaced"):
        (root / name).mkdir()
    torch.save(weights, root / "a" / "ckpt.pt")
    shutil.copy(root / "a" / "ckpt.pt", root / "copy" / "ckpt.pt")
    shutil.copy(root / "a" / "ckpt.pt", root / "replaced" / "ckpt.pt")
    return {
        "a": root / "a" / "ckpt.pt",
        "copy": root / "copy" / "ckpt.pt",
        "replaced": root / "replaced" / "ckpt.pt",  # replaced by other weights in a test
        "mean_half": local_dir(root / "mean-half", weights, mean=0.5),
        "mean_zero": local_dir(root / "mean-zero", weights, mean=0.0),
    }


def specs(files: dict[str, Path]) -> list[str]:
    return [
        f"{ARCH}:{files['a']}",
        f"{ARCH}:{files['copy']}",
        TINY,
        f"local-dir:{files['mean_half']}",
        f"local-dir:{files['mean_zero']}",
        f"{ARCH}:{files['replaced']}",
    ]


@pytest.fixture(scope="module")
def first(files: dict[str, Path]) -> Iterator[Server]:
    models = specs(files)
    srv = start_server(*(f"--model={m}" for m in models[1:]), model=models[0])
    yield srv
    srv.stop()


def spaces(server: Server) -> dict[str, dict]:
    r = httpx.get(f"{server.url}/models", timeout=30)
    assert r.status_code == 200, r.text
    return {m["spec"]: m["space"] for m in r.json()["models"]}


def header(server: Server, model: str) -> tuple[str, str]:
    """(X-Clip-Model, X-Clip-Space) of an /encode, a /v1/embeddings and a .npy /encode, which
    must agree."""
    encode = httpx.post(
        f"{server.url}/encode", json={"items": [{"text": "a dog"}], "model": model}, timeout=60
    )
    openai = httpx.post(
        f"{server.url}/v1/embeddings", json={"input": "a dog", "model": model}, timeout=60
    )
    npy = httpx.post(
        f"{server.url}/encode",
        json={"items": [{"text": "a dog"}], "model": model},
        headers={"Accept": "application/x-npy"},
        timeout=60,
    )
    assert encode.status_code == openai.status_code == npy.status_code == 200, (encode, openai)
    assert encode.headers["x-clip-space"] == openai.headers["x-clip-space"]
    assert npy.headers["x-clip-space"] == encode.headers["x-clip-space"]
    return encode.headers["x-clip-model"], encode.headers["x-clip-space"]


def test_every_embedding_response_carries_the_space_models_shows(first: Server, files):
    shown = spaces(first)
    for spec in specs(files):
        assert header(first, spec) == (spec, shown[spec]["digest"])
    r = httpx.post(
        f"{first.url}/rank",
        json={"queries": [{"text": "a"}], "candidates": [{"text": "b"}], "model": TINY},
        timeout=60,
    )
    assert r.headers["x-clip-space"] == shown[TINY]["digest"]
    cohere = httpx.post(
        f"{first.url}/v2/embed",
        json={"model": TINY, "texts": ["a"], "input_type": "search_document"},
        timeout=60,
    )
    assert cohere.status_code == 200, cohere.text
    assert cohere.headers["x-clip-space"] == shown[TINY]["digest"]


def test_the_same_checkpoint_bytes_at_two_paths_are_one_space(first: Server, files):
    shown = spaces(first)
    a, copy = shown[specs(files)[0]], shown[specs(files)[1]]
    assert a == copy and a["digest"].startswith("sha256:")
    assert a["weights"] == f"sha256:{hashlib.sha256(files['a'].read_bytes()).hexdigest()}"
    assert a["revision"] is None  # not from the hub


def test_random_weights_say_so_and_never_look_like_real_ones(first: Server):
    space = spaces(first)[TINY]
    assert space["digest"].startswith("random:") and space["weights"] == "random (seed 0)"


def test_other_preprocessing_of_the_same_weights_is_another_space(first: Server, files):
    shown = spaces(first)
    half, zero = shown[specs(files)[3]], shown[specs(files)[4]]
    assert half["weights"] == zero["weights"]
    assert half["digest"] != zero["digest"]


def test_the_start_up_line_the_operator_reads_names_each_models_space(first: Server, files):
    """The operator's SPACE column parses this line (a pod there serves one model: the first)."""
    shown = spaces(first)
    for spec in specs(files):
        assert f"{spec}: embedding space {shown[spec]['digest']} (weights " in first.log()
    assert reported_space(first.log()) == shown[specs(files)[0]]["digest"]


def test_a_changed_checkpoint_under_the_same_name_is_another_space(first: Server, files):
    """A restart after the file was replaced: same X-Clip-Model, new X-Clip-Space; the file
    left alone keeps its digest across the restart."""
    replaced, copy = specs(files)[-1], specs(files)[1]
    before = spaces(first)
    assert before[replaced] == before[copy]
    torch.save(tiny_state(seed=2), files["replaced"])
    second = start_server(f"--model={copy}", model=replaced)
    try:
        after = spaces(second)
        model, space = header(second, replaced)
    finally:
        second.stop()
    assert model == replaced and space == after[replaced]["digest"] != before[replaced]["digest"]
    assert after[copy] == before[copy]


def test_a_hub_blob_is_known_by_its_name_and_its_snapshot_by_its_commit(tmp_path: Path):
    """The hub cache's layout (sources/weights.py verified the blob against its name)."""
    blob = tmp_path / "models--org--repo" / "blobs" / ("ab" * 32)
    blob.parent.mkdir(parents=True)
    blob.write_bytes(b"not hashed: the name is the sha256")
    link = tmp_path / "models--org--repo" / "snapshots" / ("c0" * 20) / "open_clip_model.bin"
    link.parent.mkdir(parents=True)
    link.symlink_to(blob)
    assert file_sha256(link) == "ab" * 32
    assert hub_revision(link) == "c0" * 20
    loose = tmp_path / "ckpt.pt"
    loose.write_bytes(b"weights")
    assert file_sha256(loose) == hashlib.sha256(b"weights").hexdigest()
    assert hub_revision(loose) is None


def test_a_tokenizer_in_a_folder_is_known_by_its_vocabulary_not_its_path(tmp_path: Path):
    """Two caches holding the same tokenizer files are one tokenizer; other files are not."""
    ids = []
    for name, vocab in (("one", b'{"a": 0}'), ("two", b'{"a": 0}'), ("other", b'{"b": 0}')):
        (tmp_path / name).mkdir()
        (tmp_path / name / "tokenizer.json").write_bytes(vocab)
        info = TokenizerInfo("huggingface", str(tmp_path / name), 64, 0)
        ids.append(tokenizer_identity(info))
    assert ids[0] == ids[1] != ids[2]
    assert ids[0]["name"] == "sha256:" + hashlib.sha256(b'{"a": 0}').hexdigest()
    hub = TokenizerInfo("huggingface", "timm/ViT-B-16-SigLIP", 64, 1)
    assert tokenizer_identity(hub)["name"] == "timm/ViT-B-16-SigLIP"  # a repo: by its name
