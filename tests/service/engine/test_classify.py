"""POST /classify: zero-shot classification against a real server (tiny random model)."""

from __future__ import annotations

import httpx
import numpy as np
import open_clip
import pytest
from clipserve.engine import classify
from clipserve.errors import PayloadTooLarge
from clipserve.models import load_model, parse_spec
from clipserve_client import Client
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.support.memory import MB, measured
from tests.support.pictures import png_b64, png_bytes
from tests.support.server import MODEL_CONFIGS, TINY, Server

LABELS = ["dog", "cat", "red car", "tree"]
TEMPLATES = ["a photo of a {}.", "a drawing of the {}.", "{}"]
IMAGES = [{"img_blob": png_b64(color=(200, 30, 30))}, {"img_blob": png_b64(color=(0, 90, 250))}]


def post(server: Server, path: str, body: object) -> httpx.Response:
    r = httpx.post(f"{server.url}{path}", json=body, timeout=120)
    assert r.status_code == 200, r.text
    return r


def normalized(server: Server, items: list[dict]) -> np.ndarray:
    return np.asarray(post(server, "/encode", {"items": items, "normalize": True}).json())


def as_matrix(predictions: list[list[dict]], labels: list[str]) -> np.ndarray:
    """Per image, the probability of each label in `labels` order."""
    return np.asarray(
        [[{p["label"]: p["probability"] for p in row}[k] for k in labels] for row in predictions]
    )


def test_probabilities_are_the_models_softmax_over_the_prompt_ensembles(server: Server):
    out = post(server, "/classify", {"images": IMAGES, "labels": LABELS, "templates": TEMPLATES})
    assert out.headers["X-Clip-Model"] == TINY
    prompts = [{"text": t.replace("{}", label)} for label in LABELS for t in TEMPLATES]
    per_label = normalized(server, prompts).reshape(len(LABELS), len(TEMPLATES), -1).mean(axis=1)
    per_label /= np.linalg.norm(per_label, axis=1, keepdims=True)
    scale = httpx.get(f"{server.url}/models", timeout=30).json()["models"][0]["logit_scale"]
    logits = scale * normalized(server, IMAGES) @ per_label.T
    expected = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    predictions = out.json()["predictions"]
    np.testing.assert_allclose(as_matrix(predictions, LABELS), expected, rtol=1e-4, atol=1e-6)
    for row in predictions:
        probs = [p["probability"] for p in row]
        assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1, abs=1e-5)
        assert sorted(p["label"] for p in row) == sorted(LABELS)


def test_the_default_templates_are_open_clips_imagenet_ensemble(server: Server):
    ensemble = [t("{}") for t in open_clip.OPENAI_IMAGENET_TEMPLATES]
    assert len(ensemble) == 80
    default = post(server, "/classify", {"images": IMAGES[:1], "labels": LABELS}).json()
    explicit = post(
        server, "/classify", {"images": IMAGES[:1], "labels": LABELS, "templates": ensemble}
    ).json()
    plain = post(
        server, "/classify", {"images": IMAGES[:1], "labels": LABELS, "templates": ["{}"]}
    ).json()
    np.testing.assert_allclose(
        as_matrix(default["predictions"], LABELS),
        as_matrix(explicit["predictions"], LABELS),
        rtol=1e-5,
    )
    assert not np.allclose(
        as_matrix(default["predictions"], LABELS), as_matrix(plain["predictions"], LABELS)
    )


def test_plain_labels_score_as_rank_does_with_the_labels_as_candidates(server: Server):
    out = post(server, "/classify", {"images": IMAGES, "labels": LABELS, "templates": ["{}"]})
    ranked = post(
        server, "/rank", {"queries": IMAGES, "candidates": [{"text": k} for k in LABELS]}
    ).json()
    np.testing.assert_allclose(
        as_matrix(out.json()["predictions"], LABELS), ranked["probabilities"], rtol=1e-4, atol=1e-7
    )


def test_the_client_returns_predictions_most_likely_first(server: Server):
    expected = post(
        server, "/classify", {"images": IMAGES[:1], "labels": LABELS, "templates": TEMPLATES}
    ).json()["predictions"][0]
    with Client(server.url) as clip:
        got = clip.classify([png_bytes(color=(200, 30, 30))], LABELS, templates=TEMPLATES)
    assert len(got) == 1
    assert [p.label for p in got[0]] == [p["label"] for p in expected]
    assert [p.probability for p in got[0]] == pytest.approx([p["probability"] for p in expected])


def test_the_ensemble_matches_open_clips_zero_shot_classifier():
    open_clip.add_model_config(str(MODEL_CONFIGS))
    model = load_model(parse_spec(TINY))
    prompts = classify.prompts(LABELS, TEMPLATES, max_items=1024, max_chars=1000)
    ours = classify.ensemble(model.encode_text(model.tokenize(prompts)), len(LABELS))
    reference = open_clip.build_zero_shot_classifier(
        model.model, model.tokenizer, LABELS, TEMPLATES, num_classes_per_batch=None
    )
    np.testing.assert_allclose(ours.numpy(), reference.T.numpy(), rtol=1e-4, atol=1e-5)


def test_labels_times_templates_are_capped_per_max_items():
    labels, templates = [f"l{i}" for i in range(11)], [f"t{k} {{}}" for k in range(10)]
    assert len(classify.prompts(labels[:10], templates, max_items=1, max_chars=100)) == 100
    with pytest.raises(PayloadTooLarge, match="11 x 10 = 110 prompts; the limit is 100"):
        classify.prompts(labels, templates, max_items=1, max_chars=100)


def test_a_1_mb_body_of_300_mb_of_prompts_is_a_413_that_costs_the_server_no_memory(
    server: Server,
):
    # The body: 320 labels and 320 templates of ~1.5 KB. Each prompt (~3 KB) is under
    # --max-text-chars and the count is at the limit, but all of them are 300 MB of text: on
    # the code that built them first, the server grew by ~500 MB and tokenized for minutes.
    labels = [f"label {i} " + "x" * 1500 for i in range(320)]
    templates = [f"template {k} {{}} " + "y" * 1500 for k in range(320)]
    body = {"images": IMAGES[:1], "labels": labels, "templates": templates}
    # The client's timeout only keeps a regression from hanging the run.
    url = f"{server.url}/classify"
    r, growth = measured(server, lambda: httpx.post(url, json=body, timeout=90))
    print(f"1 MB /classify body: HTTP {r.status_code}, server {growth}")
    assert r.status_code == 413, r.text
    detail = r.json()["detail"]
    assert "labels x templates: 320 x 320" in detail and "bytes" in detail, detail
    assert growth.peak_growth < 50 * MB, str(growth)


def test_an_over_long_prompt_names_its_label_and_template_before_it_is_built():
    labels, templates = ["cat", "a" * 30], ["{}", "the {} and the {}"]
    with pytest.raises(PayloadTooLarge, match=r"labels\[1\]: .* in templates\[1\] has 73 char"):
        classify.prompts(labels, templates, max_items=1, max_chars=72)
    assert max(map(len, classify.prompts(labels, templates, max_items=1, max_chars=73))) == 73


_TEXT = st.text(alphabet="ab {}\u00e9\u20ac\U0001f600", max_size=6)


def _padded(core: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    """Short texts, some padded to hundreds of characters (to cross the byte budget)."""
    return st.builds(lambda c, n: c + "x" * n, core, st.sampled_from([0, 0, 1, 40, 600]))


@settings(max_examples=300, deadline=None)
@given(
    labels=st.lists(_padded(_TEXT).filter(str.strip), min_size=1, max_size=10, unique=True),
    templates=st.lists(
        _padded(st.builds(lambda a, b: a + "{}" + b, _TEXT, _TEXT)), min_size=1, max_size=10
    ),
    max_chars=st.integers(1, 2000),
)
def test_the_limits_judged_before_building_are_those_of_the_built_prompts(
    labels: list[str], templates: list[str], max_chars: int
):
    built = [t.replace("{}", label) for label in labels for t in templates]
    budget = 1 * classify.PROMPT_BYTES_PER_ITEM  # max_items=1; count limit 100 >= 10 x 10
    try:
        got = classify.prompts(labels, templates, max_items=1, max_chars=max_chars)
    except PayloadTooLarge as exc:
        longest, total = max(map(len, built)), sum(len(p.encode()) for p in built)
        if longest > max_chars:
            assert f"has {longest} characters" in exc.message
        else:
            assert total > budget and f"of {total} bytes" in exc.message
    else:
        assert got == built
        assert max(map(len, built)) <= max_chars
        assert sum(len(p.encode()) for p in built) <= budget
