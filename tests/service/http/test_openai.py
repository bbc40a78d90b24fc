"""/v1/* driven by the real `openai` package (sync and async) against a real server."""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import Iterator

import httpx
import numpy as np
import openai
import pytest
from open_clip.tokenizer import SimpleTokenizer

from tests.support.pictures import png_b64
from tests.support.server import TINY, Server, start_server

KEY = "openai-test-key"
TEXTS = ["a photo of a dog", "a cat", "an astronaut riding a horse on the moon"]


def sdk(server: Server, api_key: str = "unused") -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=api_key, max_retries=0)


def encode_normalized(server: Server, items: list[dict]) -> np.ndarray:
    r = httpx.post(f"{server.url}/encode", json={"items": items, "normalize": True}, timeout=60)
    assert r.status_code == 200, r.text
    return np.asarray(r.json(), dtype=np.float32)


def vectors(response: openai.types.CreateEmbeddingResponse) -> np.ndarray:
    assert [d.index for d in response.data] == list(range(len(response.data)))
    return np.asarray([d.embedding for d in response.data], dtype=np.float32)


def test_default_arguments_ask_for_base64_and_get_the_encode_vectors_normalized(server: Server):
    expected = encode_normalized(server, [{"text": t} for t in TEXTS])
    with sdk(server) as client:
        raw = client.embeddings.with_raw_response.create(model=TINY, input=TEXTS)
        parsed = raw.parse()
    assert json.loads(raw.http_request.content)["encoding_format"] == "base64"
    assert all(isinstance(d["embedding"], str) for d in raw.http_response.json()["data"])
    assert parsed.model == TINY and parsed.object == "list"
    np.testing.assert_allclose(vectors(parsed), expected, rtol=1e-5, atol=1e-6)


def test_float_and_explicit_base64_give_the_same_vectors(server: Server):
    with sdk(server) as client:
        floats = client.embeddings.create(model=TINY, input=TEXTS, encoding_format="float")
        b64 = client.embeddings.create(model=TINY, input=TEXTS, encoding_format="base64")
    decoded = np.stack(
        [np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in b64.data]
    )
    np.testing.assert_array_equal(decoded, vectors(floats).astype("<f4"))
    np.testing.assert_allclose(np.linalg.norm(decoded, axis=1), 1.0, rtol=1e-5)


def test_the_sdk_asks_for_a_compact_type_through_extra_body(server: Server):
    """clipserve's `embedding_type` beside the SDK's defaults: int8 as numbers (the SDK would
    decode base64 as float32, so a compact type goes with encoding_format="float")."""
    with sdk(server) as client:
        floats = vectors(client.embeddings.create(model=TINY, input=TEXTS))
        int8 = client.embeddings.create(
            model=TINY, input=TEXTS, encoding_format="float", extra_body={"embedding_type": "int8"}
        )
    expected = np.rint(np.clip(floats, -1, 1) * 127)
    np.testing.assert_array_equal(vectors(int8), expected)


def test_a_single_string_the_models_own_dimensions_and_user_are_accepted(server: Server):
    with sdk(server) as client:
        one = client.embeddings.create(model=TINY, input="a cat", dimensions=32, user="u-1")
    np.testing.assert_allclose(
        vectors(one)[0], encode_normalized(server, [{"text": "a cat"}])[0], rtol=1e-5, atol=1e-6
    )


def test_token_arrays_embed_as_the_text_they_spell(server: Server):
    ids = [SimpleTokenizer().encode(t) for t in TEXTS]
    with sdk(server) as client:
        from_text = client.embeddings.create(model=TINY, input=TEXTS)
        from_ids = client.embeddings.create(model=TINY, input=ids)
        one_array = client.embeddings.create(model=TINY, input=ids[1])
    np.testing.assert_allclose(vectors(from_ids), vectors(from_text), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(vectors(one_array)[0], vectors(from_text)[1], rtol=1e-5, atol=1e-6)
    assert from_ids.usage.prompt_tokens == from_text.usage.prompt_tokens


def test_usage_counts_tokens_with_start_and_end_whether_cached_or_not(server: Server):
    text = "usage is counted for a text never sent before"
    expected = len(SimpleTokenizer().encode(text)) + 2
    with sdk(server) as client:
        first = client.embeddings.create(model=TINY, input=[text])
        again = client.embeddings.create(model=TINY, input=[text])  # from the cache
    assert first.usage.prompt_tokens == first.usage.total_tokens == expected
    assert again.usage.prompt_tokens == expected


def test_a_data_image_uri_is_embedded_as_an_image(server: Server):
    blob = png_b64(color=(20, 160, 90))
    expected = encode_normalized(server, [{"text": "a dog"}, {"img_blob": blob}])
    with sdk(server) as client:
        got = client.embeddings.create(model=TINY, input=["a dog", f"data:image/png;base64,{blob}"])
    np.testing.assert_allclose(vectors(got), expected, rtol=1e-5, atol=1e-6)


def test_the_async_client_gets_the_same_vectors(server: Server):
    async def run() -> tuple[np.ndarray, np.ndarray]:
        async with openai.AsyncOpenAI(
            base_url=f"{server.url}/v1", api_key="unused", max_retries=0
        ) as client:
            default, floats = await asyncio.gather(
                client.embeddings.create(model=TINY, input=TEXTS),
                client.embeddings.create(model=TINY, input=TEXTS, encoding_format="float"),
            )
            return vectors(default), vectors(floats)

    default, floats = asyncio.run(run())
    expected = encode_normalized(server, [{"text": t} for t in TEXTS])
    np.testing.assert_allclose(default, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(floats, expected, rtol=1e-5, atol=1e-6)


def test_errors_reach_the_sdks_exceptions_with_our_message_and_field(server: Server):
    with sdk(server) as client:
        with pytest.raises(openai.BadRequestError) as bad:
            client.embeddings.create(model=TINY, input="a dog", dimensions=16)
        with pytest.raises(openai.NotFoundError) as missing:
            client.embeddings.create(model="text-embedding-3-small", input="a dog")
        with pytest.raises(openai.BadRequestError) as tokens:
            client.embeddings.create(model=TINY, input=[[49500]])
    assert "not trained to be truncated" in bad.value.message
    assert bad.value.param == "dimensions" and bad.value.type == "invalid_request_error"
    assert "text-embedding-3-small" in missing.value.message
    assert missing.value.code == "model_not_found" and missing.value.param == "model"
    assert "49500" in tokens.value.message and tokens.value.param == "input[0]"
    assert "another tokenizer" in tokens.value.message


def test_the_openai_error_shape_stays_on_the_openai_routes(server: Server):
    r = httpx.post(f"{server.url}/encode", json={"items": []}, timeout=30)
    assert r.status_code == 400 and set(r.json()) == {"status_code", "detail"}


def test_models_are_listed_and_retrieved_in_openais_shape(server: Server):
    with sdk(server) as client:
        listed = client.models.list()
        one = client.models.retrieve(TINY)
        with pytest.raises(openai.NotFoundError) as missing:
            client.models.retrieve("hf-hub:org/not-served")
    assert [m.id for m in listed.data] == [TINY]
    assert listed.data[0].object == "model" and listed.data[0].owned_by == "clipserve"
    assert one.id == TINY and one.created == listed.data[0].created > 0
    # the space digest rides along as an extension field, the one X-Clip-Space carries
    space = httpx.post(f"{server.url}/encode", json=[{"text": "a"}], timeout=30).headers
    assert one.model_extra == listed.data[0].model_extra == {"space": space["X-Clip-Space"]}
    assert "hf-hub:org/not-served" in missing.value.message


@pytest.fixture(scope="module")
def guarded() -> Iterator[Server]:
    srv = start_server("--api-key", KEY)
    yield srv
    srv.stop()


def test_the_api_key_is_the_openai_api_key(guarded: Server):
    with sdk(guarded, api_key="wrong") as client, pytest.raises(openai.AuthenticationError) as e:
        client.embeddings.create(model=TINY, input="a dog")
    assert "API key" in e.value.message and e.value.code == "invalid_api_key"
    with sdk(guarded, api_key=KEY) as client:
        assert len(client.embeddings.create(model=TINY, input="a dog").data[0].embedding) == 32
        assert [m.id for m in client.models.list().data] == [TINY]
