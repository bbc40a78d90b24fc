"""A model is served the way it was trained: its preprocess config and its score objective.

The model is a `local-dir:` folder written here (open_clip's own layout: open_clip_config.json
with model_cfg + preprocess_cfg, and a safetensors checkpoint), shaped like SigLIP: a
`logit_bias`, a text tower without a causal mask and last-token pooling, images squashed with
BILINEAR and normalized with mean = std = 0.5. A real server serves it; open_clip's own
`create_model_and_transforms` + tokenizer on the same folder is the reference.
"""

from __future__ import annotations

import base64
import io
import json
import math
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from tests.service.models.test_images import encode, photo
from tests.support.pictures import png_b64
from tests.support.server import Server, start_server

SIGMOID_CFG = {
    "embed_dim": 32,
    "init_logit_bias": -10,
    "init_logit_scale": math.log(10),
    "custom_text": True,
    "vision_cfg": {"image_size": 224, "layers": 2, "width": 64, "head_width": 32, "patch_size": 32},
    "text_cfg": {
        "context_length": 64,
        "vocab_size": 49408,
        "width": 64,
        "heads": 2,
        "layers": 2,
        "no_causal_mask": True,
        "pool_type": "last",
        "proj_bias": True,
    },
}
PREPROCESS = {
    "resize_mode": "squash",
    "interpolation": "bilinear",
    "mean": [0.5, 0.5, 0.5],
    "std": [0.5, 0.5, 0.5],
}


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A local-dir: model with a SigLIP-like recipe and weights saved here."""
    path = tmp_path_factory.mktemp("sigmoid-model")
    (path / "open_clip_config.json").write_text(
        json.dumps({"model_cfg": SIGMOID_CFG, "preprocess_cfg": PREPROCESS})
    )
    src = open_clip.create_model(f"local-dir:{path}", pretrained=None, require_pretrained=False)
    with torch.no_grad():  # a bias and scale unlike the init, so the test sees them used
        src.logit_bias.fill_(-3.5)
        src.logit_scale.fill_(math.log(7.0))
    save_file(
        {k: v.contiguous() for k, v in src.state_dict().items()},
        path / "open_clip_model.safetensors",
    )
    return path


@pytest.fixture(scope="module")
def reference(folder: Path) -> tuple[torch.nn.Module, object, object]:
    """open_clip's own model, preprocess and tokenizer for the folder."""
    model, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{folder}")
    return model.eval(), preprocess, open_clip.get_tokenizer(f"local-dir:{folder}")


@pytest.fixture(scope="module")
def served(folder: Path) -> Iterator[Server]:
    srv = start_server(model=f"local-dir:{folder}")
    yield srv
    srv.stop()


def _cos(a: list[float], b: list[float]) -> float:
    x, y = np.asarray(a), np.asarray(b)
    return float(x @ y / (np.linalg.norm(x) * np.linalg.norm(y)))


def test_models_shows_the_recipe_the_model_was_trained_with(served: Server, folder: Path):
    with served.client() as c:
        (info,) = c.get("/models").json()["models"]
    assert info["objective"] == "sigmoid"
    assert info["logit_bias"] == pytest.approx(-3.5)
    assert info["logit_scale"] == pytest.approx(7.0, rel=1e-5)
    assert info["preprocess"] == {
        "size": [224, 224],
        "resize_mode": "squash",
        "interpolation": "bilinear",
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
        "fill_color": 0,
        "source": "the model's open_clip_config.json",
    }
    assert info["tokenizer"] == {
        "kind": "clip-bpe",
        "name": "open_clip SimpleTokenizer",
        "context_length": 64,
    }
    assert info["context_length"] == 64
    assert info["text_trimmed"] is False  # no causal mask: padding is attended to


def test_a_landscape_image_embeds_as_open_clips_own_preprocess_and_encoder(
    served: Server, reference: tuple
):
    """The issue's case: a 3:1 PNG squashed + bilinear had cosine 0.964 with open_clip's own."""
    model, preprocess, _ = reference
    data = encode(photo(900, 300), "PNG")
    with torch.no_grad():
        expected = model.encode_image(preprocess(Image.open(io.BytesIO(data))).unsqueeze(0))[0]
    with served.client() as c:
        r = c.post("/encode", json=[{"img_blob": base64.b64encode(data).decode()}])
    assert r.status_code == 200, r.text
    got = torch.tensor(r.json()[0])
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    assert _cos(r.json()[0], expected.tolist()) > 0.99999


def test_texts_embed_as_open_clips_tokenizer_and_encoder(served: Server, reference: tuple):
    model, _, tokenizer = reference
    texts = ["a dog", "a photo of a cat on a red sofa in the sun", "x " * 80]
    with torch.no_grad():
        expected = model.encode_text(tokenizer(texts))
    with served.client() as c:
        got = torch.tensor(c.post("/encode", json=[{"text": t} for t in texts]).json())
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


def test_rank_scores_are_the_sigmoid_of_each_pair_and_probabilities_stay_softmax(served: Server):
    queries = [{"img_blob": png_b64()}, {"text": "a red square"}]
    candidates = [{"text": "a dog"}, {"text": "a cat"}, {"img_blob": png_b64(color=(0, 0, 255))}]
    with served.client() as c:
        out = c.post("/rank", json={"queries": queries, "candidates": candidates}).json()
        q = c.post("/encode", json=queries).json()
        k = c.post("/encode", json=candidates).json()
    assert out["objective"] == "sigmoid"
    for qi in range(2):
        cos = [_cos(q[qi], kj) for kj in k]
        assert out["cosine_similarities"][qi] == pytest.approx(cos, abs=1e-4)
        sig = [1 / (1 + math.exp(-(7.0 * x - 3.5))) for x in cos]
        assert out["scores"][qi] == pytest.approx(sig, abs=1e-4)
        exps = [math.exp(7.0 * x) for x in cos]
        assert out["probabilities"][qi] == pytest.approx([e / sum(exps) for e in exps], abs=1e-4)
    # each pair on its own: a row of sigmoid scores need not sum to one
    assert sum(out["scores"][0]) != pytest.approx(1.0, abs=1e-3)


def test_classify_scores_each_label_with_the_sigmoid(served: Server):
    labels = ["dog", "cat", "red square"]
    image = png_b64()
    with served.client() as c:
        r = c.post(
            "/classify",
            json={"images": [{"img_blob": image}], "labels": labels, "templates": ["{}"]},
        )
        assert r.status_code == 200, r.text
        out = r.json()
        vectors = c.post(
            "/encode", json=[{"img_blob": image}] + [{"text": t} for t in labels]
        ).json()
    assert out["objective"] == "sigmoid"
    got = {p["label"]: p["probability"] for p in out["predictions"][0]}
    for label, text_vector in zip(labels, vectors[1:], strict=True):
        expected = 1 / (1 + math.exp(-(7.0 * _cos(vectors[0], text_vector) - 3.5)))
        assert got[label] == pytest.approx(expected, abs=1e-4)
    ranked = [p["probability"] for p in out["predictions"][0]]
    assert ranked == sorted(ranked, reverse=True)
