"""Accept: application/x-npy or msgpack on /encode and /v1/embeddings: the same values as the
JSON response for the same input, what JSON carries besides the vectors in headers, errors
still JSON in the route's own shape, and HTTP content negotiation (406 when nothing fits).
The .npy bodies are read with numpy.load and the msgpack ones with msgspec, as a client would."""

from __future__ import annotations

import base64
import io
from collections.abc import Iterator

import httpx
import msgspec
import numpy as np
import pytest
from litestar.testing import TestClient

from tests.service.http.test_embedding_types import DIM, DTYPES, ITEMS, ODD, TEXTS, decoded
from tests.support.inprocess import in_process
from tests.support.server import TINY

NPY = {"Accept": "application/x-npy"}
NPY_DTYPES = {"float": "<f4", **DTYPES}
KINDS = sorted(NPY_DTYPES)


@pytest.fixture(scope="module")
def client() -> Iterator[TestClient]:
    with in_process(TINY, ODD) as c:
        yield c


def npy(response: httpx.Response) -> np.ndarray:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-npy"
    return np.load(io.BytesIO(response.content), allow_pickle=False)


def encode(
    client: TestClient, headers: dict[str, str] | None = None, **options: object
) -> httpx.Response:
    return client.post(
        "/encode", json={"items": ITEMS, "model": TINY, **options}, headers=headers or {}
    )


def openai(
    client: TestClient, headers: dict[str, str] | None = None, **options: object
) -> httpx.Response:
    return client.post(
        "/v1/embeddings", json={"input": TEXTS, "model": TINY, **options}, headers=headers or {}
    )


def columns(kind: str) -> int:
    return DIM // 8 if "binary" in kind else DIM


@pytest.mark.parametrize("kind", KINDS)
def test_encode_npy_holds_what_json_holds_for_each_type(client: TestClient, kind: str):
    as_json = encode(client, embedding_type=kind, encoding="base64")
    got = npy(encode(client, NPY, embedding_type=kind, encoding="base64"))
    expected = decoded(as_json.json(), kind)
    assert got.dtype == np.dtype(NPY_DTYPES[kind]) and got.flags.c_contiguous
    assert got.shape == (len(ITEMS), columns(kind))
    np.testing.assert_array_equal(got, expected)
    # and the numbers form of the JSON: the same values
    np.testing.assert_array_equal(got, np.asarray(encode(client, embedding_type=kind).json()))


def test_encode_npy_carries_model_type_and_shape_in_headers(client: TestClient):
    r = encode(client, NPY, embedding_type="ubinary")
    assert npy(r).shape == (3, DIM // 8)
    assert r.headers["x-clip-model"] == TINY
    assert r.headers["x-embedding-type"] == "ubinary"
    assert r.headers["x-embedding-shape"] == f"3,{DIM // 8}"
    assert r.headers["vary"] == "Accept"


def test_the_bare_array_form_answers_npy_too(client: TestClient):
    r = client.post("/encode", json=ITEMS, headers=NPY)
    np.testing.assert_array_equal(
        npy(r), np.asarray(client.post("/encode", json=ITEMS).json(), dtype=np.float32)
    )


@pytest.mark.parametrize("kind", KINDS)
def test_openai_npy_holds_what_json_holds_and_usage_and_model_in_headers(
    client: TestClient, kind: str
):
    as_json = openai(client, embedding_type=kind, encoding_format="base64")
    body = as_json.json()
    r = openai(client, NPY, embedding_type=kind, dimensions=DIM)  # dimensions: applied first
    got = npy(r)
    np.testing.assert_array_equal(got, decoded([d["embedding"] for d in body["data"]], kind))
    assert got.dtype == np.dtype(NPY_DTYPES[kind])
    assert r.headers["x-clip-model"] == body["model"] == TINY
    assert int(r.headers["x-usage-prompt-tokens"]) == body["usage"]["prompt_tokens"] > 0
    assert int(r.headers["x-usage-total-tokens"]) == body["usage"]["total_tokens"]
    assert r.headers["x-embedding-shape"] == f"{len(TEXTS)},{columns(kind)}"


@pytest.mark.parametrize("accept", ["application/msgpack", "application/x-msgpack"])
def test_msgpack_is_the_json_object_with_each_embedding_as_its_raw_bytes(
    client: TestClient, accept: str
):
    as_json = openai(client, embedding_type="int8", encoding_format="base64").json()
    r = openai(client, {"Accept": accept}, embedding_type="int8")
    assert r.status_code == 200 and r.headers["content-type"] == accept
    got = msgspec.msgpack.decode(r.content)
    for row in as_json["data"]:
        row["embedding"] = base64.b64decode(row["embedding"])
    assert got == as_json

    rows = msgspec.msgpack.decode(
        encode(client, {"Accept": accept}, embedding_type="float").content
    )
    floats = np.asarray(encode(client).json(), dtype=np.float32)
    assert all(isinstance(row, bytes) for row in rows)
    np.testing.assert_array_equal(np.frombuffer(b"".join(rows), "<f4").reshape(3, DIM), floats)


def test_errors_stay_json_in_each_routes_shape_when_npy_is_asked(client: TestClient):
    bad_item = client.post("/encode", json=[{"text": 3}], headers=NPY)
    assert bad_item.status_code == 400
    assert bad_item.headers["content-type"].startswith("application/json")
    assert "$[0].text" in bad_item.json()["detail"]

    odd = encode(client, NPY, model=ODD, embedding_type="binary")
    assert odd.status_code == 400
    assert odd.json()["detail"].startswith("embedding_type: binary packs 8 dimensions")

    dims = openai(client, NPY, dimensions=DIM - 1)
    assert dims.status_code == 400
    assert dims.json()["error"]["param"] == "dimensions"

    unknown = openai(client, NPY, model="No-Such-Model")
    assert unknown.status_code == 404
    assert unknown.json()["error"]["code"] == "model_not_found"


@pytest.mark.parametrize(
    "accept",
    ["text/html", "image/png, text/*", "application/json;q=0", "*/*;q=0", "application/x-npz"],
)
def test_an_accept_nothing_fits_is_a_406_naming_accept(client: TestClient, accept: str):
    r = encode(client, {"Accept": accept})
    assert r.status_code == 406
    assert r.json()["detail"].startswith("Accept: ")
    assert "application/x-npy" in r.json()["detail"]
    v1 = openai(client, {"Accept": accept})
    assert v1.status_code == 406
    assert v1.json()["error"]["param"] == "Accept"


@pytest.mark.parametrize(
    ("accept", "answered"),
    [
        (None, "application/json"),
        ("", "application/json"),
        ("*/*", "application/json"),
        ("application/*", "application/json"),
        ("text/html,application/xhtml+xml,*/*;q=0.8", "application/json"),  # a browser
        ("application/json, application/x-npy;q=0.5", "application/json"),
        ("application/x-npy, application/json;q=0.5", "application/x-npy"),
        ("application/x-npy, application/json", "application/x-npy"),  # first listed, same q
        ("*/*;q=0.1, application/x-npy", "application/x-npy"),
        ("*/*, application/json;q=0", "application/x-npy"),  # JSON refused, the next offered
        ("Application/X-NPY; q=0.7", "application/x-npy"),
        ("application/x-msgpack, application/json;q=0.9", "application/x-msgpack"),
    ],
)
def test_the_media_type_follows_http_content_negotiation(
    client: TestClient, accept: str | None, answered: str
):
    headers = {} if accept is None else {"Accept": accept}
    r = encode(client, headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].split(";")[0] == answered


def test_openapi_describes_the_binary_media_types_and_406(client: TestClient):
    paths = client.get("/schema/openapi.json").json()["paths"]
    for path in ("/encode", "/v1/embeddings"):
        post = paths[path]["post"]
        content = post["responses"]["200"]["content"]
        assert {"application/json", "application/x-npy", "application/msgpack"} <= set(content)
        assert "X-Embedding-Shape" in content["application/x-npy"]["schema"]["description"]
        assert "406" in post["responses"]
    assert "application/x-npy" not in paths["/rank"]["post"]["responses"]["200"]["content"]
