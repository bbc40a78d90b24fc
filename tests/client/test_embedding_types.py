"""Client.encode(embedding_type=...): numpy arrays of the type's dtype, holding the documented
transform of the float vectors (see tests/service/http/test_embedding_types.py)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from clipserve_client import APIError, AsyncClient, Client

from tests.service.http.test_embedding_types import documented
from tests.support.server import Server

TEXTS = ["a dog", "a cat", "a red car", "the moon"]
DTYPES = {
    "float16": np.float16,
    "int8": np.int8,
    "uint8": np.uint8,
    "binary": np.int8,
    "ubinary": np.uint8,
}


@pytest.mark.parametrize("kind", sorted(DTYPES))
def test_each_type_comes_back_as_its_dtype_with_the_documented_values(server: Server, kind: str):
    with Client(server.url) as clip:
        # float16 follows normalize (default no); int8 and uint8 are of the normalized vector,
        # and the binary types' sign bits are the same either way
        floats = clip.encode(TEXTS, normalize=kind != "float16")
        got = clip.encode(TEXTS, embedding_type=kind)  # type: ignore[arg-type]
    assert floats.dtype == np.float32
    assert got.dtype == DTYPES[kind]
    dim = floats.shape[1] // 8 if "binary" in kind else floats.shape[1]
    assert got.shape == (len(TEXTS), dim)
    np.testing.assert_array_equal(got, documented(floats, kind))


def test_the_async_client_gives_the_same_arrays(server: Server):
    async def both() -> tuple[np.ndarray, np.ndarray]:
        async with AsyncClient(server.url) as clip:
            return (
                await clip.encode(TEXTS, embedding_type="int8"),
                await clip.encode(TEXTS, embedding_type="ubinary"),
            )

    int8, ubinary = asyncio.run(both())
    with Client(server.url) as clip:
        np.testing.assert_array_equal(int8, clip.encode(TEXTS, embedding_type="int8"))
        np.testing.assert_array_equal(ubinary, clip.encode(TEXTS, embedding_type="ubinary"))
    assert (int8.dtype, ubinary.dtype) == (np.int8, np.uint8)


def test_int8_without_normalize_is_the_servers_400(server: Server):
    with Client(server.url) as clip, pytest.raises(APIError) as caught:
        clip.encode(TEXTS, embedding_type="int8", normalize=False)
    assert caught.value.status_code == 400 and "normalize" in str(caught.value)


def test_an_unknown_type_is_refused_before_sending(server: Server):
    with Client(server.url) as clip, pytest.raises(ValueError, match="embedding_type"):
        clip.encode(TEXTS, embedding_type="int4")  # type: ignore[arg-type]
