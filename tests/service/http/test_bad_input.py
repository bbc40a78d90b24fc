"""Bad input gets a clear 4xx naming the problem, and the server keeps serving."""

from __future__ import annotations

import base64

import pytest
from litestar.testing import TestClient

from tests.support.pictures import png_b64, png_bytes
from tests.support.server import Server

CASES = [
    # (name, path, body or raw bytes, expected status, words the message must contain)
    ("empty array", "/encode", [], 400, ["items", "empty"]),
    ("item with no field", "/encode", [{}], 400, ["items[0]", "exactly one"]),
    (
        "item with two fields",
        "/encode",
        [{"text": "a", "img_blob": png_b64()}],
        400,
        ["items[0]", "text and img_blob"],
    ),
    ("unknown field", "/encode", [{"txt": "a"}], 400, ["txt"]),
    (
        "invalid base64",
        "/encode",
        [{"text": "ok"}, {"img_blob": "!!!not base64!!!"}],
        400,
        ["items[1].img_blob", "base64"],
    ),
    (
        "bytes that are not an image",
        "/encode",
        [{"img_blob": base64.b64encode(b"hello, I am text").decode()}],
        400,
        ["items[0].img_blob", "image"],
    ),
    (
        "unknown model",
        "/encode",
        {"items": [{"text": "a"}], "model": "ViT-Nope:x"},
        404,
        ["model", "ViT-Nope:x"],
    ),
    ("text is a number", "/encode", [{"text": 5}], 400, ["str", "$[0].text"]),
    (
        "queries not a list",
        "/rank",
        {"queries": "a", "candidates": [{"text": "b"}]},
        400,
        ["queries"],
    ),
    ("rank without candidates", "/rank", {"queries": [{"text": "a"}]}, 400, ["candidates"]),
    (
        "empty candidates",
        "/rank",
        {"queries": [{"text": "a"}], "candidates": []},
        400,
        ["candidates", "empty"],
    ),
    (
        "bad item inside rank",
        "/rank",
        {"queries": [{"text": "a"}], "candidates": [{"text": "b"}, {"img_uri": "ftp://x/y.png"}]},
        400,
        ["candidates[1].img_uri"],
    ),
    ("openai input of the wrong type", "/v1/embeddings", {"input": 3}, 400, ["input"]),
    ("openai empty input", "/v1/embeddings", {"input": []}, 400, ["input", "empty"]),
    (
        "openai strings mixed with token ids",
        "/v1/embeddings",
        {"input": ["a dog", 5]},
        400,
        ["input[1]", "token id"],
    ),
    (
        "openai token id outside the vocabulary",
        "/v1/embeddings",
        {"input": [[320, 1929, 99999]]},
        400,
        ["input[0]", "99999", "vocabulary"],
    ),
    (
        "openai dimensions other than the model's",
        "/v1/embeddings",
        {"input": "a dog", "dimensions": 16},
        400,
        ["dimensions", "16", "32", "truncated"],
    ),
    (
        "openai dimensions of zero",
        "/v1/embeddings",
        {"input": "a", "dimensions": 0},
        400,
        ["$.dimensions"],
    ),
    (
        "openai unknown encoding format",
        "/v1/embeddings",
        {"input": "a", "encoding_format": "int8"},
        400,
        ["encoding_format"],
    ),
    (
        "openai image data URI that is not an image",
        "/v1/embeddings",
        {"input": ["data:image/png;base64," + base64.b64encode(b"not a png").decode()]},
        400,
        ["input[0]", "image"],
    ),
    (
        "openai unknown model",
        "/v1/embeddings",
        {"input": "a", "model": "text-embedding-3-small"},
        404,
        ["model", "text-embedding-3-small"],
    ),
    (
        "classify without labels",
        "/classify",
        {"images": [{"img_blob": png_b64()}], "labels": []},
        400,
        ["labels", "empty"],
    ),
    (
        "classify with a repeated label",
        "/classify",
        {"images": [{"img_blob": png_b64()}], "labels": ["dog", "cat", "dog"]},
        400,
        ["labels[2]", "labels[0]"],
    ),
    (
        "classify template without a placeholder",
        "/classify",
        {"images": [{"img_blob": png_b64()}], "labels": ["dog"], "templates": ["{}", "a photo"]},
        400,
        ["templates[1]", "{}"],
    ),
    (
        "classify a text",
        "/classify",
        {"images": [{"text": "a dog"}], "labels": ["dog"]},
        400,
        ["images[0]", "text"],
    ),
    (
        "classify over the prompt limit",
        "/classify",
        {"images": [{"img_blob": png_b64()}], "labels": [f"l{i}" for i in range(1025)]},
        413,
        ["labels", "1025"],
    ),
    (
        "classify a bad image",
        "/classify",
        {"images": [{"img_blob": "!!"}], "labels": ["dog"], "templates": ["{}"]},
        400,
        ["images[0].img_blob", "base64"],
    ),
    (
        "classify label over its bound",
        "/classify",
        {"images": [{"img_blob": png_b64()}], "labels": ["dog", "x" * 2049]},
        400,
        ["$.labels[1]", "2048"],
    ),
    (
        "classify template over its bound",
        "/classify",
        {"images": [{"img_blob": png_b64()}], "labels": ["dog"], "templates": ["{}" * 1025]},
        400,
        ["$.templates[0]", "2048"],
    ),
    (
        "classify prompts over the byte budget",
        "/classify",
        {
            "images": [{"img_blob": png_b64()}],
            "labels": [f"{i}" + "x" * 2000 for i in range(100)],
            "templates": [f"{k} {{}}" + "y" * 2000 for k in range(100)],
        },
        413,
        ["labels x templates", "bytes"],
    ),
    (
        "model name over its bound",
        "/encode",
        {"items": [{"text": "a"}], "model": "m" * 8193},
        400,
        ["$.model", "8192"],
    ),
    (
        "openai user over its bound",
        "/v1/embeddings",
        {"input": "a", "user": "u" * 1025},
        400,
        ["$.user", "1024"],
    ),
    (
        "openai token array over the limit",
        "/v1/embeddings",
        {"input": [320] * 8193},
        413,
        ["input", "8193 token ids"],
    ),
    (
        "openai nested token array over the limit",
        "/v1/embeddings",
        {"input": [[320], [320] * 8193]},
        413,
        ["input[1]", "8193 token ids"],
    ),
    ("non-JSON body", "/encode", b"this is not json", 400, ["JSON"]),
    ("truncated JSON", "/encode", b'[{"text": "a"', 400, ["JSON"]),
]


@pytest.mark.parametrize(
    ("name", "path", "body", "status", "words"), CASES, ids=[c[0] for c in CASES]
)
def test_bad_input_is_a_4xx_naming_the_problem(api: TestClient, name, path, body, status, words):
    if isinstance(body, bytes):
        r = api.post(path, content=body, headers={"content-type": "application/json"})
    else:
        r = api.post(path, json=body)
    assert r.status_code == status, r.text
    detail = message(path, r.json())
    for word in words:
        assert word.lower() in detail.lower(), (word, detail)
    # and the server still works for the next request
    ok = api.post("/encode", json=[{"text": "still alive"}, {"img_blob": png_b64()}])
    assert ok.status_code == 200


def message(path: str, body: dict) -> str:
    """The error message: OpenAI's shape on /v1/*, which OpenAI's clients parse; ours elsewhere."""
    if path.startswith("/v1/"):
        error = body["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert error["type"] == "invalid_request_error"
        return error["message"]
    return body["detail"]


def test_a_bad_item_does_not_harm_concurrent_good_requests(server: Server):
    import concurrent.futures as cf

    bad = [{"text": "fine"}, {"img_blob": base64.b64encode(png_bytes()[:40]).decode()}]
    good = [{"text": "fine"}, {"img_blob": png_b64()}]
    with server.client() as c, cf.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(c.post, "/encode", json=bad if i % 2 else good) for i in range(16)]
        codes = [f.result().status_code for f in futures]
    assert codes == [200, 400] * 8
