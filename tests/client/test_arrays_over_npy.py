"""Client.encode fetches its arrays as one .npy body (Accept: application/x-npy), and reads a
server that answers JSON all the same (one from before .npy responses) from its JSON. Both
against the real server process; the transports below only watch or rewrite the request's
Accept header, they answer nothing themselves."""

from __future__ import annotations

import asyncio

import httpx
import numpy as np
import pytest
from clipserve_client import APIError, AsyncClient, Client

from tests.support.server import Server

TEXTS = ["a dog", "a cat", "a red car", "the moon"]
DTYPES = {
    "float": np.float32,
    "float16": np.float16,
    "int8": np.int8,
    "uint8": np.uint8,
    "binary": np.int8,
    "ubinary": np.uint8,
}
KINDS = sorted(DTYPES)


class Watching(httpx.HTTPTransport):
    """A real HTTP transport that keeps each exchange's Accept and Content-Type."""

    def __init__(self, json_only: bool = False) -> None:
        super().__init__()
        self.json_only = json_only
        self.seen: list[tuple[str, str]] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        if self.json_only:  # as a server that knows no .npy: JSON is all it sends
            request.headers["Accept"] = "application/json"
        response = super().handle_request(request)
        self.seen.append((request.headers["Accept"], response.headers["content-type"]))
        return response


def json_rows(server: Server, kind: str) -> np.ndarray:
    """The JSON numbers for the same input (normalize left out, as the client does), read
    without the client."""
    body = {"items": [{"text": t} for t in TEXTS], "embedding_type": kind}
    r = httpx.post(f"{server.url}/encode", json=body, timeout=60)
    assert r.status_code == 200, r.text
    return np.asarray(r.json())


@pytest.mark.parametrize("kind", KINDS)
def test_encode_reads_a_npy_body_equal_to_the_json_one(server: Server, kind: str):
    watch = Watching()
    with Client(server.url, transport=watch) as clip:
        got = clip.encode(TEXTS, embedding_type=kind)  # type: ignore[arg-type]
    accept, content_type = watch.seen[-1]
    assert accept.startswith("application/x-npy")
    assert content_type == "application/x-npy"
    expected = json_rows(server, kind)
    np.testing.assert_array_equal(got, expected)
    assert got.dtype == DTYPES[kind]


def test_a_server_that_answers_json_is_read_from_its_json(server: Server):
    watch, plain = Watching(json_only=True), Watching()
    with Client(server.url, transport=watch) as old, Client(server.url, transport=plain) as new:
        for kind in KINDS:
            from_json = old.encode(TEXTS, embedding_type=kind)  # type: ignore[arg-type]
            from_npy = new.encode(TEXTS, embedding_type=kind)  # type: ignore[arg-type]
            np.testing.assert_array_equal(from_json, from_npy)
            assert from_json.dtype == from_npy.dtype
    assert {ct.split(";")[0] for _, ct in watch.seen} == {"application/json"}
    assert {ct for _, ct in plain.seen} == {"application/x-npy"}


def test_errors_asked_for_as_npy_still_raise_the_servers_message(server: Server):
    with Client(server.url) as clip, pytest.raises(APIError) as caught:
        clip.encode(TEXTS, model="No-Such-Model")
    assert caught.value.status_code == 404 and caught.value.detail.startswith("model: ")


def test_the_async_client_reads_npy_too(server: Server):
    async def run() -> np.ndarray:
        async with AsyncClient(server.url) as clip:
            return await clip.encode(TEXTS, embedding_type="uint8")

    np.testing.assert_array_equal(asyncio.run(run()), json_rows(server, "uint8"))


def test_rank_and_models_stay_json(server: Server):
    watch = Watching()
    with Client(server.url, transport=watch) as clip:
        clip.rank(["a dog"], ["a dog", "a cat"])
        clip.models()
    assert [accept for accept, _ in watch.seen] == ["application/json"] * 2
