"""/v2/embed and /v2/rerank driven by the real `cohere` package (ClientV2 and AsyncClientV2,
default arguments) against a real server; every vector and score is checked against what
/encode, /rank or /v1/embeddings give for the same inputs, and the embedding types against the
README's transforms, written out here."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Iterator

import cohere
import httpx
import numpy as np
import pytest
from litestar.testing import TestClient
from open_clip.tokenizer import SimpleTokenizer

from tests.support.hf_tokenizers import cache_tokenizer
from tests.support.inprocess import in_process
from tests.support.pictures import png_b64
from tests.support.server import TINY, Server, start_server

KEY = "cohere-test-key"
ODD = "Tiny-Odd-T:random"  # 36 dimensions: not divisible by 8
HF_ARCH, HF_REPO = "Tiny-HFTok-T", "clipserve-tests/tiny-unigram"  # a Hugging Face tokenizer
TEXTS = ["a photo of a dog", "a cat", "an astronaut riding a horse on the moon"]
BLOBS = [png_b64(color=(20, 160, 90)), png_b64(color=(200, 30, 30))]
URIS = [f"data:image/png;base64,{b}" for b in BLOBS]
# 200 tokens, past CLIP's 77-token context, and each side of a cut different; its first five
# tokens are HEAD's
HEAD = "a photo of a dog"
LONG = " ".join([HEAD] * 20 + ["a red car on a road"] * 20)


def sdk(server: Server, api_key: str = "unused") -> cohere.ClientV2:
    return cohere.ClientV2(base_url=server.url, api_key=api_key)


def encode_normalized(server: Server, items: list[dict]) -> np.ndarray:
    r = httpx.post(f"{server.url}/encode", json={"items": items, "normalize": True}, timeout=60)
    assert r.status_code == 200, r.text
    return np.asarray(r.json(), dtype=np.float32)


def from_token_ids(server: Server, ids: list[list[int]]) -> np.ndarray:
    """The vectors of token arrays, through OpenAI's route (normalized, as Cohere's)."""
    r = httpx.post(f"{server.url}/v1/embeddings", json={"input": ids, "model": TINY}, timeout=60)
    assert r.status_code == 200, r.text
    return np.asarray([d["embedding"] for d in r.json()["data"]], dtype=np.float32)


def floats(response: cohere.EmbedByTypeResponse) -> np.ndarray:
    assert response.embeddings.float_ is not None
    return np.asarray(response.embeddings.float_, dtype=np.float32)


def documented(x: np.ndarray, kind: str) -> np.ndarray:
    """The README's transforms of normalized float32 rows."""
    if kind == "int8":
        return np.rint(np.clip(x, -1, 1) * 127).astype(np.int8)
    if kind == "uint8":
        return np.rint((np.clip(x, -1, 1) + 1) * 127.5).astype(np.uint8)
    bits = np.packbits(x > 0, axis=1)
    return bits if kind == "ubinary" else (bits.astype(np.int16) - 128).astype(np.int8)


def close(got: np.ndarray, expected: np.ndarray) -> None:
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


# -- embed ---------------------------------------------------------------------------------


def test_texts_with_default_arguments_are_the_encode_vectors_as_floats(server: Server):
    with sdk(server) as co:
        got = co.embed(model=TINY, input_type="search_document", texts=TEXTS)
    close(floats(got), encode_normalized(server, [{"text": t} for t in TEXTS]))
    assert got.texts == TEXTS and got.id and got.response_type == "embeddings_by_type"
    assert got.embeddings.int8 is None and got.embeddings.base64 is None
    assert got.meta is not None and got.meta.billed_units.input_tokens > len(TEXTS)


def test_every_input_type_is_accepted_and_changes_nothing(server: Server):
    with sdk(server) as co:
        each = [
            floats(co.embed(model=TINY, input_type=kind, texts=TEXTS))
            for kind in ("search_document", "search_query", "classification", "clustering")
        ]
    for vectors in each[1:]:
        np.testing.assert_array_equal(vectors, each[0])


@pytest.mark.parametrize("kind", ["int8", "uint8", "binary", "ubinary"])
def test_each_compact_type_is_the_documented_transform(server: Server, kind: str):
    with sdk(server) as co:
        got = co.embed(model=TINY, input_type="search_query", texts=TEXTS, embedding_types=[kind])
    expected = documented(encode_normalized(server, [{"text": t} for t in TEXTS]), kind)
    np.testing.assert_array_equal(np.asarray(getattr(got.embeddings, kind)), expected)
    assert got.embeddings.float_ is None


def test_several_types_at_once_are_keyed_by_type_and_share_one_vector(server: Server):
    kinds = ["float", "int8", "uint8", "binary", "ubinary", "base64"]
    with sdk(server) as co:
        got = co.embed(model=TINY, input_type="image", images=URIS, embedding_types=kinds)
    raw = httpx.post(
        f"{server.url}/v2/embed",
        json={"model": TINY, "input_type": "image", "images": URIS, "embedding_types": kinds},
        timeout=60,
    )
    assert set(raw.json()["embeddings"]) == set(kinds)
    x = floats(got)
    close(x, encode_normalized(server, [{"img_blob": b} for b in BLOBS]))
    for kind in ("int8", "uint8", "binary", "ubinary"):
        np.testing.assert_array_equal(
            np.asarray(getattr(got.embeddings, kind)), documented(x, kind)
        )
    assert got.embeddings.base64 is not None
    b64 = [np.frombuffer(base64.b64decode(s), dtype="<f4") for s in got.embeddings.base64]
    np.testing.assert_array_equal(np.stack(b64), x)  # Cohere's base64: the float32 bytes


def test_mixed_inputs_are_one_vector_each_and_a_pair_is_its_parts_mean(server: Server):
    text, image = (
        {"type": "text", "text": "a dog"},
        {"type": "image_url", "image_url": {"url": URIS[0]}},
    )
    typed = cohere.EmbedInput(  # the SDK's own types, as its docs build them
        content=[
            cohere.TextEmbedContent(text="a dog"),
            cohere.ImageUrlEmbedContent(image_url=cohere.EmbedImageUrl(url=URIS[0])),
        ]
    )
    inputs = [{"content": [text]}, {"content": [image]}, {"content": [text, image]}, typed]
    with sdk(server) as co:
        got = floats(co.embed(model=TINY, input_type="search_document", inputs=inputs))
    parts = encode_normalized(server, [{"text": "a dog"}, {"img_blob": BLOBS[0]}])
    mean = parts.sum(axis=0)
    pair = mean / np.linalg.norm(mean)
    close(got, np.stack([parts[0], parts[1], pair, pair]))


def test_truncate_cuts_a_long_text_from_the_side_asked(server: Server):
    ids = SimpleTokenizer().encode(LONG)
    assert len(ids) > 75  # the model embeds 75 tokens between its start and end tokens
    with sdk(server) as co:
        default = floats(co.embed(model=TINY, input_type="search_document", texts=[LONG]))
        end = floats(
            co.embed(model=TINY, input_type="search_document", texts=[LONG], truncate="END")
        )
        start = floats(
            co.embed(model=TINY, input_type="search_document", texts=[LONG], truncate="START")
        )
        five = floats(
            co.embed(model=TINY, input_type="search_document", texts=[LONG], max_tokens=5)
        )
        short = floats(
            co.embed(model=TINY, input_type="search_query", texts=["a cat"], truncate="NONE")
        )
    head, tail = from_token_ids(server, [ids[:75], ids[-75:]])
    close(default[0], head)
    close(end[0], head)
    close(start[0], tail)
    assert SimpleTokenizer().encode(HEAD) == ids[:5]
    close(five[0], encode_normalized(server, [{"text": HEAD}])[0])
    close(short[0], encode_normalized(server, [{"text": "a cat"}])[0])
    assert not np.allclose(head, tail)


def test_the_models_own_output_dimension_is_accepted(server: Server):
    with sdk(server) as co:
        got = co.embed(model=TINY, input_type="search_query", texts=TEXTS, output_dimension=32)
    assert floats(got).shape == (3, 32)


# -- rerank --------------------------------------------------------------------------------


def rank_scores(server: Server, query: dict, candidates: list[dict]) -> np.ndarray:
    r = httpx.post(
        f"{server.url}/rank", json={"queries": [query], "candidates": candidates}, timeout=60
    )
    assert r.status_code == 200, r.text
    return np.asarray(r.json()["scores"][0])


def test_rerank_orders_texts_and_images_by_the_rank_scores(server: Server):
    documents = ["a cat", URIS[0], "a photo of a dog", URIS[1], "a car"]
    candidates = [{"text": "a cat"}, {"img_blob": BLOBS[0]}, {"text": "a photo of a dog"}]
    candidates += [{"img_blob": BLOBS[1]}, {"text": "a car"}]
    with sdk(server) as co:
        got = co.rerank(model=TINY, query="a dog", documents=documents)
    expected = rank_scores(server, {"text": "a dog"}, candidates)
    assert [r.index for r in got.results] == list(np.argsort(-expected, kind="stable"))
    close(np.asarray([r.relevance_score for r in got.results]), np.sort(expected)[::-1])
    assert all(0 <= r.relevance_score <= 1 for r in got.results)


def test_an_image_query_ranks_text_documents_as_rank_does(server: Server):
    with sdk(server) as co:
        got = co.rerank(model=TINY, query=URIS[1], documents=TEXTS)
    expected = rank_scores(server, {"img_blob": BLOBS[1]}, [{"text": t} for t in TEXTS])
    assert [r.index for r in got.results] == list(np.argsort(-expected, kind="stable"))
    close(np.asarray([r.relevance_score for r in got.results]), np.sort(expected)[::-1])


def test_top_n_keeps_the_best_and_return_documents_echoes_them(server: Server):
    documents = ["a cat", "a dog", "a car", "a tree"]
    with sdk(server) as co:
        every = co.rerank(model=TINY, query="a dog", documents=documents)
        two = co.rerank(
            model=TINY,
            query="a dog",
            documents=documents,
            top_n=2,
            request_options={"additional_body_parameters": {"return_documents": True}},
        )
        beyond = co.rerank(model=TINY, query="a dog", documents=documents, top_n=10)
    assert [r.index for r in two.results] == [r.index for r in every.results[:2]]
    assert [r.document for r in two.results] == [  # type: ignore[attr-defined]
        {"text": documents[r.index]} for r in two.results
    ]
    assert len(beyond.results) == len(documents)
    assert not hasattr(every.results[0], "document")


def test_max_tokens_per_doc_cuts_text_documents_at_their_end(server: Server):
    with sdk(server) as co:
        cut = co.rerank(model=TINY, query="a dog", documents=[LONG, "a cat"], max_tokens_per_doc=5)
        head = co.rerank(model=TINY, query="a dog", documents=[HEAD, "a cat"])
        whole = co.rerank(model=TINY, query="a dog", documents=[LONG, "a cat"])
    by_index = [{r.index: r.relevance_score for r in x.results} for x in (cut, head, whole)]
    assert by_index[0] == pytest.approx(by_index[1], rel=1e-5)
    assert by_index[0] != pytest.approx(by_index[2], rel=1e-5)


# -- async ---------------------------------------------------------------------------------


def test_the_async_client_gets_the_same_vectors_and_ranking(server: Server):
    async def run() -> tuple[cohere.EmbedByTypeResponse, cohere.V2RerankResponse]:
        async with cohere.AsyncClientV2(base_url=server.url, api_key="unused") as co:
            return await asyncio.gather(
                co.embed(model=TINY, input_type="search_document", texts=TEXTS),
                co.rerank(model=TINY, query="a dog", documents=TEXTS),
            )

    embedded, ranked = asyncio.run(run())
    close(floats(embedded), encode_normalized(server, [{"text": t} for t in TEXTS]))
    expected = rank_scores(server, {"text": "a dog"}, [{"text": t} for t in TEXTS])
    assert [r.index for r in ranked.results] == list(np.argsort(-expected, kind="stable"))


# -- bad input -----------------------------------------------------------------------------

BAD_EMBEDS = {
    "embedding_types[1]": {"texts": TEXTS, "embedding_types": ["float", "float16"]},
    "output_dimension": {"texts": TEXTS, "output_dimension": 64},
    "images[1]": {"images": [URIS[0], "https://example.com/a.png"]},
    "inputs[0].content[1].image_url.url": {
        "inputs": [
            {
                "content": [
                    {"type": "text", "text": "a"},
                    {"type": "image_url", "image_url": {"url": "a.png"}},
                ]
            }
        ]
    },
    "texts[1]": {"texts": ["a cat", LONG], "truncate": "NONE"},
    "images[0]": {"images": ["data:image/png;base64,not-an-image"]},
}


@pytest.mark.parametrize("field", sorted(BAD_EMBEDS))
def test_a_bad_embed_is_the_sdks_bad_request_naming_the_field(server: Server, field: str):
    with sdk(server) as co, pytest.raises(cohere.BadRequestError) as bad:
        co.embed(model=TINY, input_type="search_document", **BAD_EMBEDS[field])
    assert bad.value.status_code == 400
    assert bad.value.body["message"].startswith(f"{field}: "), bad.value.body


BAD_RERANKS = {
    "documents": {"documents": []},
    "top_n": {"documents": ["a"], "top_n": 0},
    "documents[1]": {"documents": ["a", "data:image/png;base64,AAAA"]},
}


@pytest.mark.parametrize("field", sorted(BAD_RERANKS))
def test_a_bad_rerank_is_the_sdks_bad_request_naming_the_field(server: Server, field: str):
    with sdk(server) as co, pytest.raises(cohere.BadRequestError) as bad:
        co.rerank(model=TINY, query="a dog", **BAD_RERANKS[field])
    assert field in bad.value.body["message"], bad.value.body


def test_an_unknown_model_is_the_sdks_not_found(server: Server):
    with sdk(server) as co, pytest.raises(cohere.NotFoundError) as missing:
        co.embed(model="embed-v4.0", input_type="search_document", texts=TEXTS)
    assert missing.value.body["message"].startswith("model: 'embed-v4.0' is not served")


RAW_BAD = [
    ({"model": TINY, "texts": TEXTS, "embedding_types": ["bits"]}, "embedding_types[0]"),
    ({"model": TINY, "texts": TEXTS, "images": URIS}, "images"),
    ({"model": TINY}, "texts"),
    ({"model": TINY, "texts": "a cat"}, "$.texts"),
    ({"model": TINY, "texts": TEXTS, "truncate": "MIDDLE"}, "$.truncate"),
    ({"model": TINY, "inputs": [{"content": []}]}, "$.inputs[0].content"),
    ({"model": TINY, "texts": [], "input_type": "search_query"}, "texts"),
    ({"texts": TEXTS}, "model"),
]


@pytest.mark.parametrize(("body", "field"), RAW_BAD, ids=[f for _, f in RAW_BAD])
def test_raw_http_errors_are_400s_in_cohere_shape(server: Server, body: dict, field: str):
    r = httpx.post(f"{server.url}/v2/embed", json=body, timeout=60)
    assert r.status_code == 400
    assert set(r.json()) == {"message"} and field in r.json()["message"], r.text


def test_raw_http_rerank_errors_and_bad_json_are_400s_in_cohere_shape(server: Server):
    for body, field in [
        ({"model": TINY, "query": "a", "documents": ["a"], "top_n": -1}, "$.top_n"),
        ({"model": TINY, "query": "a", "documents": []}, "documents"),
        ({"model": TINY, "query": "a"}, "documents"),
    ]:
        r = httpx.post(f"{server.url}/v2/rerank", json=body, timeout=60)
        assert r.status_code == 400 and set(r.json()) == {"message"}, r.text
        assert field in r.json()["message"], r.text
    r = httpx.post(f"{server.url}/v2/embed", content=b"{not json", timeout=60)
    assert r.status_code == 400 and "not valid JSON" in r.json()["message"]


def test_the_cohere_error_shape_stays_on_the_cohere_routes(server: Server):
    assert set(httpx.post(f"{server.url}/encode", json={"items": []}).json()) == {
        "status_code",
        "detail",
    }
    assert set(httpx.post(f"{server.url}/v1/embeddings", json={"input": []}).json()) == {"error"}


# -- a second model, and an API key ---------------------------------------------------------


@pytest.fixture(scope="module")
def guarded() -> Iterator[Server]:
    srv = start_server("--api-key", KEY, "--model", ODD)
    yield srv
    srv.stop()


def test_the_api_key_is_the_cohere_api_key(guarded: Server):
    with sdk(guarded, api_key="wrong") as co, pytest.raises(cohere.UnauthorizedError) as e:
        co.embed(model=TINY, input_type="search_query", texts=TEXTS)
    assert e.value.status_code == 401 and "API key" in e.value.body["message"]
    with sdk(guarded, api_key=KEY) as co:
        assert floats(co.embed(model=TINY, input_type="search_query", texts=TEXTS)).shape == (3, 32)
        assert len(co.rerank(model=ODD, query="a dog", documents=TEXTS).results) == 3


def test_binary_types_need_a_dimension_divisible_by_8(guarded: Server):
    with sdk(guarded, api_key=KEY) as co:
        int8 = co.embed(model=ODD, input_type="search_query", texts=TEXTS, embedding_types=["int8"])
        with pytest.raises(cohere.BadRequestError) as bad:
            co.embed(model=ODD, input_type="search_query", texts=TEXTS, embedding_types=["ubinary"])
    assert np.asarray(int8.embeddings.int8).shape == (3, 36)
    message = bad.value.body["message"]
    assert message.startswith("embedding_types[0]: ubinary packs 8") and "36" in message


# -- a model with another tokenizer (SigLIP's kind), in this process ------------------------


@pytest.fixture(scope="module")
def hf_tokenized(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    root = tmp_path_factory.mktemp("hf-cache")
    cache_tokenizer(root / "hub", HF_REPO, root / "work")
    with in_process(f"{HF_ARCH}:random", offline=True, cache_dir=str(root / "hub")) as client:
        yield client


@pytest.mark.parametrize(
    ("path", "body", "field"),
    [
        ("embed", {"texts": ["a dog"], "truncate": "START"}, "truncate"),
        ("embed", {"texts": ["a dog"], "truncate": "NONE"}, "truncate"),
        ("embed", {"texts": ["a dog"], "max_tokens": 3}, "max_tokens"),
        (
            "rerank",
            {"query": "a", "documents": ["a dog"], "max_tokens_per_doc": 3},
            "max_tokens_per_doc",
        ),
    ],
)
def test_token_counts_need_clips_tokenizer_and_say_so(
    hf_tokenized: TestClient, path: str, body: dict, field: str
):
    r = hf_tokenized.post(f"/v2/{path}", json={"model": HF_ARCH, **body})
    assert r.status_code == 400 and r.json()["message"].startswith(f"{field}: "), r.text
    assert "does not tokenize with CLIP's BPE" in r.json()["message"]
    ok = hf_tokenized.post("/v2/embed", json={"model": HF_ARCH, "texts": ["a dog"]})
    assert ok.status_code == 200, ok.text
