"""LangChain's OpenAIEmbeddings and LlamaIndex's OpenAIEmbedding (the real, pinned packages)
pointed at a real server's /v1, configured as the README shows."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import llama_index.core
import numpy as np
import openai
import pytest
import tiktoken
from langchain_openai import OpenAIEmbeddings
from llama_index.embeddings.openai import OpenAIEmbedding

from tests.support.pictures import png_b64
from tests.support.server import TINY, Server

TEXTS = ["a photo of a dog", "a cat on a sofa", "an astronaut riding a horse on the moon"]
QUERY = "a sleepy kitten"
FOREIGN = "a corgi wearing sunglasses"
CLIP_VOCAB = 49408  # the tiny model's, as CLIP's
# tiktoken downloads its BPE files on first use, which this machine cannot; LlamaIndex ships
# cl100k_base's (the file tiktoken would fetch, checked against tiktoken's own hash on load).
TIKTOKEN_FILES = Path(llama_index.core.__file__).parent / "_static" / "tiktoken_cache"


def encoded(server: Server, texts: list[str]) -> np.ndarray:
    """/encode's L2-normalized vectors: what /v1/embeddings must give for the same texts."""
    items = [{"text": t} for t in texts]
    r = httpx.post(f"{server.url}/encode", json={"items": items, "normalize": True}, timeout=60)
    assert r.status_code == 200, r.text
    return np.asarray(r.json(), dtype=np.float32)


def langchain(server: Server, **kwargs: object) -> OpenAIEmbeddings:
    return OpenAIEmbeddings(
        model=TINY, base_url=f"{server.url}/v1", api_key="unused", max_retries=0, **kwargs
    )


def llamaindex(server: Server) -> OpenAIEmbedding:
    return OpenAIEmbedding(
        model_name=TINY, api_base=f"{server.url}/v1", api_key="unused", max_retries=0
    )


def test_langchain_with_texts_as_strings_embeds_documents_and_queries(server: Server):
    embeddings = langchain(server, check_embedding_ctx_length=False)
    docs = np.asarray(embeddings.embed_documents(TEXTS), dtype=np.float32)
    query = np.asarray(embeddings.embed_query(QUERY), dtype=np.float32)
    np.testing.assert_allclose(docs, encoded(server, TEXTS), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(query, encoded(server, [QUERY])[0], rtol=1e-5, atol=1e-6)


def test_langchain_async_gives_the_same_vectors(server: Server):
    embeddings = langchain(server, check_embedding_ctx_length=False)

    async def run() -> tuple[list[list[float]], list[float]]:
        return await asyncio.gather(
            embeddings.aembed_documents(TEXTS), embeddings.aembed_query(QUERY)
        )

    docs, query = asyncio.run(run())
    np.testing.assert_allclose(docs, encoded(server, TEXTS), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(query, encoded(server, [QUERY])[0], rtol=1e-5, atol=1e-6)


def test_langchain_embeds_an_image_given_as_a_data_uri_beside_texts(server: Server):
    blob = png_b64(color=(200, 40, 40))
    embeddings = langchain(server, check_embedding_ctx_length=False)
    got = embeddings.embed_documents(["a red square", f"data:image/png;base64,{blob}"])
    r = httpx.post(
        f"{server.url}/encode",
        json={"items": [{"text": "a red square"}, {"img_blob": blob}], "normalize": True},
        timeout=60,
    )
    np.testing.assert_allclose(got, r.json(), rtol=1e-5, atol=1e-6)


def test_langchains_default_tiktoken_ids_are_refused_with_the_setting_that_fixes_it(
    server: Server, monkeypatch: pytest.MonkeyPatch
):
    """The default configuration, run for real: LangChain tokenizes with tiktoken's
    cl100k_base (its files from LlamaIndex's bundled copy, as there is no network here) and
    sends the ids; the server refuses them instead of embedding some other text."""
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(TIKTOKEN_FILES))
    # Only ids past CLIP's vocabulary tell tiktoken's apart: "sunglasses" has one (60469),
    # while every id of "a photo of a dog" is also a CLIP id (the README says so).
    ids = tiktoken.get_encoding("cl100k_base").encode_ordinary
    assert max(ids(FOREIGN)) >= CLIP_VOCAB and max(ids(TEXTS[0])) < CLIP_VOCAB
    with pytest.raises(openai.BadRequestError) as refused:
        langchain(server).embed_documents([*TEXTS, FOREIGN])
    assert refused.value.param is not None and refused.value.param.startswith("input")
    message = refused.value.message
    assert "another tokenizer's ids" in message and "tiktoken" in message
    assert "check_embedding_ctx_length=False" in message


def test_large_token_ids_are_refused_naming_input_and_tiktoken(server: Server):
    """The same refusal for any client that sends ids past CLIP's vocabulary."""
    r = httpx.post(
        f"{server.url}/v1/embeddings",
        json={"model": TINY, "input": [[320, 1125], [9906, 100257]]},
        timeout=30,
    )
    error = r.json()["error"]
    assert r.status_code == 400 and error["param"] == "input[1]"
    assert "100257" in error["message"] and "tiktoken" in error["message"]
    assert error["type"] == "invalid_request_error"


def test_llamaindex_with_model_name_embeds_texts_and_queries(server: Server):
    embeddings = llamaindex(server)
    docs = embeddings.get_text_embedding_batch(TEXTS)
    one = embeddings.get_text_embedding(TEXTS[0])
    query = embeddings.get_query_embedding(QUERY)
    np.testing.assert_allclose(docs, encoded(server, TEXTS), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(one, encoded(server, TEXTS[:1])[0], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(query, encoded(server, [QUERY])[0], rtol=1e-5, atol=1e-6)


def test_llamaindex_async_gives_the_same_vectors(server: Server):
    embeddings = llamaindex(server)

    async def run() -> tuple[list[list[float]], list[float]]:
        return await asyncio.gather(
            embeddings.aget_text_embedding_batch(TEXTS), embeddings.aget_query_embedding(QUERY)
        )

    docs, query = asyncio.run(run())
    np.testing.assert_allclose(docs, encoded(server, TEXTS), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(query, encoded(server, [QUERY])[0], rtol=1e-5, atol=1e-6)


def test_llamaindex_takes_a_clip_spec_only_as_model_name():
    """Why the README says model_name=: `model` must be one of OpenAI's own names."""
    with pytest.raises(ValueError, match=TINY):
        OpenAIEmbedding(model=TINY, api_base="http://127.0.0.1:1/v1", api_key="unused")
