"""The HTTP API of the app in-process (tiny random-weights model): the wire formats, headers and
metrics; what needs a real process is in test_hardening and test_batching."""

from __future__ import annotations

import asyncio
import math

import pytest
from clipserve.engine.engine import Engine
from clipserve.errors import Overloaded
from clipserve.metrics import Metrics
from clipserve.models import parse_spec
from clipserve.schemas import Item
from clipserve.settings import Settings, available_cpus
from litestar.testing import TestClient

from tests.support.inprocess import in_process
from tests.support.pictures import png_b64
from tests.support.server import TINY

EMBED_DIM = 32  # tests/support/model_configs/Tiny-ViT-T.json


def _norm(v: list[float]) -> float:
    return math.sqrt(sum(x * x for x in v))


def _cos(a: list[float], b: list[float]) -> float:
    return sum(x * y for x, y in zip(a, b, strict=True)) / (_norm(a) * _norm(b))


def test_encode_accepts_the_seed_array_and_returns_one_embedding_per_item_in_order(api: TestClient):
    body = [{"text": "picture of a dog"}, {"img_blob": png_b64()}, {"text": "a cat"}]
    r = api.post("/encode", json=body)
    assert r.status_code == 200, r.text
    out = r.json()
    assert len(out) == 3 and all(len(v) == EMBED_DIM for v in out)
    # order is kept: each item alone gives the same vector as in the mixed request
    for item, vec in zip(body, out, strict=True):
        alone = api.post("/encode", json=[item]).json()[0]
        assert _cos(alone, vec) == pytest.approx(1.0, abs=1e-5)
    assert _cos(out[0], out[2]) < 0.9999  # different texts, different vectors


def test_encode_is_not_normalized_by_default_and_normalizes_on_request(api: TestClient):
    raw = api.post("/encode", json=[{"text": "a dog"}]).json()[0]
    normed = api.post("/encode", json={"items": [{"text": "a dog"}], "normalize": True}).json()
    assert _norm(raw) != pytest.approx(1.0, abs=1e-3)
    assert _norm(normed[0]) == pytest.approx(1.0, abs=1e-5)
    assert _cos(raw, normed[0]) == pytest.approx(1.0, abs=1e-5)


def test_encode_accepts_data_uris_like_blobs(api: TestClient):
    blob = png_b64()
    a = api.post("/encode", json=[{"img_blob": blob}]).json()[0]
    b = api.post("/encode", json=[{"img_uri": f"data:image/png;base64,{blob}"}]).json()[0]
    assert a == pytest.approx(b, abs=1e-6)


def test_rank_rows_sum_to_one_and_follow_the_models_logit_scale(api: TestClient):
    queries = [{"img_blob": png_b64()}, {"text": "a red square"}]
    candidates = [{"text": "a dog"}, {"text": "a cat"}, {"img_blob": png_b64(color=(0, 0, 255))}]
    r = api.post("/rank", json={"queries": queries, "candidates": candidates})
    assert r.status_code == 200, r.text
    out = r.json()
    scale = api.get("/models").json()["models"][0]["logit_scale"]
    q = api.post("/encode", json=queries).json()
    k = api.post("/encode", json=candidates).json()
    assert set(out) == {"probabilities", "cosine_similarities", "scores", "objective"}
    # a CLIP model's own scores are the softmax probabilities: nothing changes for it
    assert out["objective"] == "softmax" and out["scores"] == out["probabilities"]
    assert len(out["probabilities"]) == 2 and all(len(row) == 3 for row in out["probabilities"])
    for qi, (probs, cosines) in enumerate(
        zip(out["probabilities"], out["cosine_similarities"], strict=True)
    ):
        assert sum(probs) == pytest.approx(1.0, abs=1e-5)
        expected_cos = [_cos(q[qi], kj) for kj in k]
        assert cosines == pytest.approx(expected_cos, abs=1e-4)
        exps = [math.exp(scale * x) for x in expected_cos]
        assert probs == pytest.approx([e / sum(exps) for e in exps], abs=1e-4)


def test_models_lists_the_loaded_model_with_its_settings(api: TestClient):
    r = api.get("/models")
    available = api.get("/models", params={"available": "true"}).json()["available"]
    assert r.status_code == 200
    (info,) = r.json()["models"]
    assert info["spec"] == TINY and info["architecture"] == "Tiny-ViT-T"
    assert info["random_weights"] is True and info["default"] is True
    assert info["embedding_dim"] == EMBED_DIM and info["image_size"] == 224
    assert info["objective"] == "softmax" and info["logit_bias"] is None
    # no pretrained tag to say otherwise: open_clip's default, CLIP's recipe, said so
    assert info["preprocess"]["size"] == [224, 224]
    assert info["preprocess"]["resize_mode"] == "shortest"
    assert info["preprocess"]["interpolation"] == "bicubic"
    assert "default" in info["preprocess"]["source"]
    assert info["tokenizer"]["kind"] == "clip-bpe" and info["text_trimmed"] is True
    assert info["device"] == "cpu" and info["dtype"] == "fp32"
    assert info["batching"]["max_batch_size"] == 16  # the CPU default
    # CPU default: one worker per usable CPU; a lone item gets every one of them as threads
    assert info["batching"]["compute_workers"] == available_cpus()
    assert info["batching"]["compute_threads"] == available_cpus()
    assert "available" not in r.json()
    assert "ViT-B-32:openai" in available and "ViT-L-14:openai" in available


def test_openai_embeddings_accepts_a_string_or_a_list(api: TestClient):
    one = api.post("/v1/embeddings", json={"input": "a dog"}).json()
    many = api.post("/v1/embeddings", json={"input": ["a dog", "a cat"], "model": TINY}).json()
    raw = api.post("/encode", json=[{"text": "a dog"}]).json()[0]
    assert one["object"] == "list" and one["model"] == TINY
    assert [d["index"] for d in many["data"]] == [0, 1]
    vec = one["data"][0]["embedding"]
    assert _norm(vec) == pytest.approx(1.0, abs=1e-5)
    assert _cos(vec, raw) == pytest.approx(1.0, abs=1e-5)
    assert many["data"][0]["embedding"] == pytest.approx(vec, abs=1e-5)
    # start + "a" + "dog" + end = 4 tokens per text
    assert one["usage"] == {"prompt_tokens": 4, "total_tokens": 4}
    assert many["usage"]["prompt_tokens"] == 8


def test_every_response_names_the_model_even_errors(api: TestClient):
    responses = [
        api.post("/encode", json=[{"text": "x"}]),
        api.post("/rank", json={"queries": [{"text": "x"}], "candidates": [{"text": "y"}]}),
        api.get("/models"),
        api.get("/healthz"),
        api.get("/readyz"),
        api.get("/metrics"),
        api.post("/encode", json=[]),  # 400
        api.post("/encode", json={"items": [{"text": "x"}], "model": "nope"}),  # 404
    ]
    for r in responses:
        assert r.headers.get("x-clip-model") == TINY, (r.request.url, r.status_code)


def test_health_and_readiness_are_ok_once_loaded(api: TestClient):
    assert api.get("/healthz").json() == {"status": "ok"}
    assert api.get("/readyz").json() == {"status": "ready"}


def test_openapi_schema_documents_the_endpoints(api: TestClient):
    schema = api.get("/schema/openapi.json").json()
    swagger = api.get("/schema/swagger")
    assert {"/encode", "/rank", "/v1/embeddings", "/models"} <= set(schema["paths"])
    assert swagger.status_code == 200 and "swagger" in swagger.text.lower()


def test_metrics_expose_the_documented_families(api: TestClient):
    api.post("/encode", json=[{"text": "x"}, {"img_blob": png_b64()}])
    text = api.get("/metrics").text
    for name in (
        "clipserve_requests_total",
        "clipserve_request_duration_seconds_bucket",
        "clipserve_items_total",
        "clipserve_batch_size_bucket",
        "clipserve_queue_depth",
        "clipserve_queue_wait_seconds_bucket",
        "clipserve_compute_seconds_bucket",
        "clipserve_model_info",
        "clipserve_ready",
        "process_resident_memory_bytes",
    ):
        assert name in text, name
    assert f'clipserve_items_total{{modality="image",model="{TINY}"}}' in text
    assert 'clipserve_requests_total{endpoint="/encode",status="200"}' in text
    assert "\nclipserve_ready 1.0\n" in text  # sampled at scrape time, not by /readyz


@pytest.mark.slow
def test_several_models_are_served_and_picked_by_name():
    with in_process(TINY, "ViT-B-32:random") as c:
        names = [m["spec"] for m in c.get("/models").json()["models"]]
        default = c.post("/encode", json=[{"text": "a"}])
        big = c.post("/encode", json={"items": [{"text": "a"}], "model": "ViT-B-32:random"})
        by_arch = c.post("/encode", json={"items": [{"text": "a"}], "model": "ViT-B-32"})
    assert names == [TINY, "ViT-B-32:random"]
    assert default.headers["x-clip-model"] == TINY and len(default.json()[0]) == EMBED_DIM
    assert big.headers["x-clip-model"] == "ViT-B-32:random" and len(big.json()[0]) == 512
    assert by_arch.json() == big.json()


def test_work_sent_before_the_models_are_loaded_is_a_503_to_retry():
    engine = Engine(Settings(model=(TINY,)), [parse_spec(TINY)], Metrics())  # not loaded
    with pytest.raises(Overloaded, match="still loading") as err:
        asyncio.run(engine.encode([Item(text="a")], model=None, normalize=False, where="items"))
    assert err.value.status_code == 503 and err.value.headers == {"Retry-After": "2"}
