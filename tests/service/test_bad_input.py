"""Bad input gets a clear 4xx naming the problem, and the server keeps serving."""

from __future__ import annotations

import base64

import pytest

from tests.service.conftest import png_b64, png_bytes
from tests.service.server import Server

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
    ("non-JSON body", "/encode", b"this is not json", 400, ["JSON"]),
    ("truncated JSON", "/encode", b'[{"text": "a"', 400, ["JSON"]),
]


@pytest.mark.parametrize(
    ("name", "path", "body", "status", "words"), CASES, ids=[c[0] for c in CASES]
)
def test_bad_input_is_a_4xx_naming_the_problem(server: Server, name, path, body, status, words):
    with server.client() as c:
        if isinstance(body, bytes):
            r = c.post(path, content=body, headers={"content-type": "application/json"})
        else:
            r = c.post(path, json=body)
        assert r.status_code == status, r.text
        detail = r.json()["detail"]
        for word in words:
            assert word.lower() in detail.lower(), (word, detail)
        # and the server still works for the next request
        ok = c.post("/encode", json=[{"text": "still alive"}, {"img_blob": png_b64()}])
        assert ok.status_code == 200


def test_a_bad_item_does_not_harm_concurrent_good_requests(server: Server):
    import concurrent.futures as cf

    bad = [{"text": "fine"}, {"img_blob": base64.b64encode(png_bytes()[:40]).decode()}]
    good = [{"text": "fine"}, {"img_blob": png_b64()}]
    with server.client() as c, cf.ThreadPoolExecutor(8) as pool:
        futures = [pool.submit(c.post, "/encode", json=bad if i % 2 else good) for i in range(16)]
        codes = [f.result().status_code for f in futures]
    assert codes == [200, 400] * 8
