"""embedding_type on /encode and /v1/embeddings: every type is the documented transform of the
float vector the same request gives, as numbers or base64, and bad asks are 400s naming the
field. The transforms are written out here from the README, not imported from the service."""

from __future__ import annotations

import base64
from collections.abc import Iterator

import numpy as np
import pytest
from litestar.testing import TestClient

from tests.support.inprocess import in_process
from tests.support.server import TINY

ODD = "Tiny-Odd-T:random"  # 36 dimensions: not divisible by 8
DIM = 32
ITEMS = [{"text": "a dog"}, {"text": "a cat on a mat"}, {"text": "an astronaut"}]
TEXTS = [i["text"] for i in ITEMS]
DTYPES = {"float16": "<f2", "int8": "i1", "uint8": "u1", "binary": "i1", "ubinary": "u1"}


def documented(x: np.ndarray, kind: str) -> np.ndarray:
    """The README's conventions, from float32 normalized rows."""
    x = x.astype(np.float32)
    if kind == "float16":
        return x.astype(np.float16)
    if kind == "int8":
        return np.rint(np.clip(x, -1, 1) * 127).astype(np.int8)
    if kind == "uint8":
        return np.rint((np.clip(x, -1, 1) + 1) * 127.5).astype(np.uint8)
    bits = np.packbits(x > 0, axis=1)
    return bits if kind == "ubinary" else (bits.astype(np.int16) - 128).astype(np.int8)


def decoded(rows: list[str], kind: str) -> np.ndarray:
    dtype = "<f4" if kind == "float" else DTYPES[kind]
    return np.stack([np.frombuffer(base64.b64decode(r), dtype=dtype) for r in rows])


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with in_process(TINY, ODD) as c:
        yield c


def encode(client: TestClient, **options: object) -> list:
    r = client.post("/encode", json={"items": ITEMS, "model": TINY, **options})
    assert r.status_code == 200, r.text
    return r.json()


def openai(client: TestClient, **options: object) -> list:
    r = client.post("/v1/embeddings", json={"input": TEXTS, "model": TINY, **options})
    assert r.status_code == 200, r.text
    return [d["embedding"] for d in r.json()["data"]]


@pytest.mark.parametrize("kind", sorted(DTYPES))
def test_encode_gives_each_type_as_the_documented_transform_in_json_and_base64(
    client: TestClient, kind: str
):
    floats = np.asarray(encode(client, normalize=True), dtype=np.float32)
    expected = documented(floats, kind)
    as_json = np.asarray(encode(client, normalize=True, embedding_type=kind))
    as_b64 = decoded(encode(client, normalize=True, embedding_type=kind, encoding="base64"), kind)
    np.testing.assert_array_equal(as_json, expected.astype(np.float64))
    np.testing.assert_array_equal(as_b64, expected)
    assert as_b64.dtype == expected.dtype
    assert as_b64.shape == (len(ITEMS), DIM // 8 if "binary" in kind else DIM)


@pytest.mark.parametrize("kind", sorted(DTYPES))
def test_openai_route_gives_each_type_in_both_encoding_formats(client: TestClient, kind: str):
    floats = np.asarray(openai(client, encoding_format="float"), dtype=np.float32)
    expected = documented(floats, kind)
    as_json = np.asarray(openai(client, encoding_format="float", embedding_type=kind))
    as_b64 = decoded(openai(client, encoding_format="base64", embedding_type=kind), kind)
    np.testing.assert_array_equal(as_json, expected.astype(np.float64))
    np.testing.assert_array_equal(as_b64, expected)


def test_float_base64_on_encode_is_little_endian_float32_of_the_numbers(client: TestClient):
    floats = np.asarray(encode(client), dtype=np.float32)
    rows = encode(client, encoding="base64")
    assert all(len(base64.b64decode(r)) == DIM * 4 for r in rows)
    np.testing.assert_array_equal(decoded(rows, "float"), floats)


def test_the_bare_array_stays_float_and_unnormalized(client: TestClient):
    bare = client.post("/encode", json=ITEMS)
    assert bare.status_code == 200
    assert bare.json() == encode(client)
    assert not np.allclose(np.linalg.norm(np.asarray(bare.json()), axis=1), 1.0)


def test_ubinary_puts_the_first_dimension_in_the_high_bit(client: TestClient):
    floats = np.asarray(encode(client, normalize=True))
    packed = np.asarray(encode(client, embedding_type="ubinary"), dtype=np.uint8)
    for j in range(DIM):
        bit = (packed[:, j // 8] >> (7 - j % 8)) & 1
        np.testing.assert_array_equal(bit == 1, floats[:, j] > 0)


@pytest.mark.parametrize("kind", ["int8", "uint8"])
def test_scaled_types_normalize_unless_told_not_to_which_is_a_400(client: TestClient, kind: str):
    assert encode(client, embedding_type=kind) == encode(
        client, embedding_type=kind, normalize=True
    )
    r = client.post("/encode", json={"items": ITEMS, "embedding_type": kind, "normalize": False})
    assert r.status_code == 400
    assert r.json()["detail"].startswith("normalize: ")


def test_float16_follows_normalize_as_asked(client: TestClient):
    raw = np.asarray(encode(client), dtype=np.float32)
    np.testing.assert_array_equal(
        encode(client, embedding_type="float16"), documented(raw, "float16")
    )


@pytest.mark.parametrize("route", ["/encode", "/v1/embeddings"])
def test_an_unknown_type_is_a_400_naming_the_field(client: TestClient, route: str):
    body = {"items": ITEMS} if route == "/encode" else {"input": TEXTS}
    r = client.post(route, json={**body, "embedding_type": "int4"})
    assert r.status_code == 400
    assert "embedding_type" in r.text
    if route == "/v1/embeddings":
        assert r.json()["error"]["param"] == "embedding_type"


@pytest.mark.parametrize("kind", ["binary", "ubinary"])
@pytest.mark.parametrize("route", ["/encode", "/v1/embeddings"])
def test_binary_of_a_dimension_not_divisible_by_8_is_a_400_naming_the_field(
    client: TestClient, route: str, kind: str
):
    body = {"items": ITEMS} if route == "/encode" else {"input": TEXTS}
    r = client.post(route, json={**body, "model": ODD, "embedding_type": kind})
    assert r.status_code == 400, r.text
    if route == "/encode":
        assert r.json()["detail"].startswith("embedding_type: ")
        assert "36" in r.json()["detail"]
    else:
        assert r.json()["error"]["param"] == "embedding_type"
    # the other types of the same model are fine
    ok = client.post(route, json={**body, "model": ODD, "embedding_type": "int8"})
    assert ok.status_code == 200, ok.text
