"""clipserve_client (Client and AsyncClient) against real server processes."""

from __future__ import annotations

import asyncio
import base64
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from clipserve.bench.scrape import MetricsPage
from clipserve_client import (
    APIError,
    AsyncClient,
    Client,
    ModelChanged,
    RequestTimeout,
    image,
    text,
)
from PIL import Image

from tests.support.checkpoints import ARCH, tiny_state
from tests.support.origin import Origin
from tests.support.pictures import png_bytes
from tests.support.server import TINY, Server, free_port, start_server

KEY = "client-test-key"


@pytest.fixture(scope="module")
def origin() -> Iterator[Origin]:
    with Origin() as o:
        o.add("/red.png", png_bytes(color=(200, 30, 30)), headers={"Content-Type": "image/png"})
        o.add("/slow.png", png_bytes(), delay_s=30)
        yield o


@pytest.fixture(scope="module")
def guarded() -> Iterator[Server]:
    """A server that wants an API key, may fetch from loopback, and queues one item at most."""
    srv = start_server("--api-key", KEY, "--max-queue", "1", "--fetch-allow", "127.0.0.1")
    yield srv
    srv.stop()


def raw_encode(server: Server, items: list[dict], **kw: str) -> np.ndarray:
    r = httpx.post(f"{server.url}/encode", json=items, timeout=60, **kw)  # type: ignore[arg-type]
    assert r.status_code == 200, r.text
    return np.asarray(r.json(), dtype=np.float32)


def test_encode_takes_texts_and_images_as_paths_bytes_pil_images_and_urls(
    server: Server, tmp_path: Path
):
    png = png_bytes(color=(10, 200, 30))
    path = tmp_path / "green.png"
    path.write_bytes(png)
    blob = {"img_blob": base64.b64encode(png).decode()}
    expected = raw_encode(server, [{"text": "a dog"}, {"text": "a cat"}, blob])
    with Client(server.url) as clip:
        both = clip.encode(texts=["a dog", "a cat"], images=[path])
        one_text = clip.encode(texts="a dog")
        from_str_path = clip.encode(images=str(path))
        from_bytes = clip.encode(images=png)
        from_pil = clip.encode(images=Image.open(path))
        data_uri = clip.encode(images=f"data:image/png;base64,{blob['img_blob']}")
    assert both.dtype == np.float32 and both.shape == expected.shape
    np.testing.assert_allclose(both, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(one_text[0], expected[0], rtol=1e-5, atol=1e-6)
    for got in (from_str_path, from_bytes, from_pil, data_uri):
        np.testing.assert_allclose(got[0], expected[2], rtol=1e-5, atol=1e-6)


def test_encode_normalizes_on_request(server: Server):
    with Client(server.url) as clip:
        raw = clip.encode(texts=["a dog"])
        unit = clip.encode(texts=["a dog"], normalize=True)
    np.testing.assert_allclose(np.linalg.norm(unit, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(unit[0], raw[0] / np.linalg.norm(raw[0]), rtol=1e-5, atol=1e-6)


def test_rank_takes_strings_as_texts_and_image_items_and_matches_the_server(server: Server):
    png = png_bytes(color=(0, 0, 255))
    with Client(server.url) as clip:
        ranking = clip.rank([image(png), "a red square"], [text("a dog"), "a cat", image(png)])
    r = httpx.post(
        f"{server.url}/rank",
        json={
            "queries": [{"img_blob": base64.b64encode(png).decode()}, {"text": "a red square"}],
            "candidates": [
                {"text": "a dog"},
                {"text": "a cat"},
                {"img_blob": base64.b64encode(png).decode()},
            ],
        },
        timeout=60,
    ).json()
    np.testing.assert_allclose(ranking.probabilities, r["probabilities"], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(ranking.cosine_similarities, r["cosine_similarities"], atol=1e-6)
    assert ranking.probabilities.shape == (2, 3)
    np.testing.assert_allclose(ranking.scores, r["scores"], rtol=1e-5, atol=1e-6)
    assert ranking.objective == r["objective"] == "softmax"


def test_the_server_fetches_image_urls_the_client_passes_on(guarded: Server, origin: Origin):
    with Client(guarded.url, api_key=KEY) as clip:
        by_url = clip.encode(images=origin.url("/red.png"))
        inline = clip.encode(images=png_bytes(color=(200, 30, 30)))
    assert origin.hits("/red.png") >= 1
    np.testing.assert_allclose(by_url, inline, rtol=1e-5, atol=1e-6)


def test_server_errors_raise_with_the_servers_message(server: Server):
    with Client(server.url) as clip, pytest.raises(APIError) as err:
        clip.encode(texts=["a dog"], model="No-Such-Model:random")
    assert err.value.status_code == 404 and "No-Such-Model:random" in err.value.detail


def test_the_api_key_is_sent_from_the_argument_or_the_environment(
    guarded: Server, monkeypatch: pytest.MonkeyPatch
):
    with Client(guarded.url) as clip, pytest.raises(APIError) as err:
        clip.encode(texts="a dog")
    assert err.value.status_code == 401
    with Client(guarded.url, api_key=KEY) as clip:
        assert clip.encode(texts="a dog").shape[0] == 1
    monkeypatch.setenv("CLIPSERVE_API_KEY", KEY)
    with Client(guarded.url) as clip:
        assert clip.encode(texts="a dog").shape[0] == 1


def fresh_texts(n: int) -> list[str]:
    """Texts no server has seen: a cached text never reaches the queue (nor its limit)."""
    return [f"never sent before {uuid.uuid4()}" for _ in range(n)]


def test_a_503_is_retried_after_its_retry_after_then_raised(guarded: Server):
    # Two items never fit a queue of one: the real server answers 503 with Retry-After: 1.
    before = _count_503(guarded)
    start = time.monotonic()
    with Client(guarded.url, api_key=KEY, retries=2) as clip, pytest.raises(APIError) as err:
        clip.encode(texts=fresh_texts(2))
    elapsed = time.monotonic() - start
    assert err.value.status_code == 503 and "queue is full" in err.value.detail
    assert _count_503(guarded) - before == 3  # the first try and two retries
    assert elapsed >= 2.0  # waited Retry-After (1 s) before each retry


def test_retry_waits_are_capped_by_the_client(guarded: Server):
    start = time.monotonic()
    with (
        Client(guarded.url, api_key=KEY, retries=3, max_retry_wait_s=0.1) as clip,
        pytest.raises(APIError),
    ):
        clip.encode(texts=fresh_texts(2))
    assert time.monotonic() - start < 1.0  # three capped waits, not three seconds


def test_a_slow_answer_raises_a_timeout(guarded: Server, origin: Origin):
    start = time.monotonic()
    with (
        Client(guarded.url, api_key=KEY, timeout=1.0) as clip,
        pytest.raises(RequestTimeout, match="no answer in time"),
    ):
        clip.encode(images=origin.url("/slow.png"))  # the server waits on the origin
    assert time.monotonic() - start < 10


def test_a_refused_connection_is_retried_then_raised():
    port = free_port()  # nothing listens there
    with (
        Client(f"http://127.0.0.1:{port}", retries=2, max_retry_wait_s=0.05) as clip,
        pytest.raises(Exception, match="cannot connect"),
    ):
        clip.encode(texts="a dog")


def _count_503(server: Server) -> float:
    return MetricsPage.get(server.url).value("clipserve_requests_total", status="503")


# --- the embedding space changing under the caller -----------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Weights for a second model of the same architecture (another spec, another space)."""
    from clipserve.models import add_model_configs, load_model, parse_spec

    from tests.support.server import MODEL_CONFIGS

    add_model_configs(str(MODEL_CONFIGS))
    path = tmp_path_factory.mktemp("ckpt") / "other.pt"
    torch.save({"state_dict": load_model(parse_spec(TINY)).model.state_dict()}, path)
    return path


def test_a_model_swap_behind_the_same_url_raises_model_changed(checkpoint: Path):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    loop = asyncio.Runner()  # one loop for the async client's pooled connections
    clip, aclip = Client(url), AsyncClient(url)
    first = start_server(port=port)
    try:
        clip.encode(texts="a dog")
        loop.run(aclip.encode(texts="a dog"))
        assert clip.seen_model() == aclip.seen_model() == TINY
    finally:
        first.stop()
    second = start_server(port=port, model=f"Tiny-ViT-T:{checkpoint}")
    try:
        with pytest.raises(ModelChanged) as err:
            clip.encode(texts="a dog")
        assert err.value.previous == TINY and err.value.current.endswith("other.pt")
        with pytest.raises(ModelChanged):  # still refused: nothing was re-embedded yet
            clip.encode(texts="a dog")
        with pytest.raises(ModelChanged):
            loop.run(aclip.encode(texts="a dog"))
        clip.reset()
        assert clip.encode(texts="a dog").shape == (1, 32)
        assert clip.seen_model() == err.value.current
        with Client(url, on_model_change="warn", expect_model=TINY) as lenient:
            with pytest.warns(UserWarning, match="not comparable"):
                lenient.encode(texts="a dog")
            assert lenient.seen_model() == err.value.current
        with Client(url, expect_model=TINY) as pinned, pytest.raises(ModelChanged):
            pinned.encode(texts="a dog")  # vectors stored from TINY: refused from the start
    finally:
        clip.close()
        loop.run(aclip.aclose())
        loop.close()
        second.stop()


def test_new_weights_under_the_same_spec_raise_model_changed_naming_both_spaces(tmp_path: Path):
    """The checkpoint file replaced and the server restarted: X-Clip-Model is the same, the
    space is not; `expect_space` (a digest stored with the vectors) is checked at once."""
    weights = tmp_path / "weights.pt"
    torch.save(tiny_state(seed=1), weights)
    spec, port = f"{ARCH}:{weights}", free_port()
    url = f"http://127.0.0.1:{port}"
    first = start_server(port=port, model=spec)
    try:
        with Client(url) as clip:
            clip.encode(texts="a dog")
            before = clip.seen_space()
            assert before is not None and before.startswith("sha256:")
            torch.save(tiny_state(seed=2), weights)
            first.stop()
            second = start_server(port=port, model=spec)
            try:
                with pytest.raises(ModelChanged) as err:
                    clip.encode(texts="a dog")
                assert err.value.previous == err.value.current == spec
                assert err.value.previous_space == before != err.value.current_space
                assert f"(space {before}) and is now" in str(err.value)
                clip.reset()
                assert clip.encode(texts="a dog").shape == (1, 32)
                assert clip.seen_space() == err.value.current_space
                with Client(url, expect_space=before) as stored, pytest.raises(ModelChanged):
                    stored.encode(texts="a dog")  # vectors stored from the old weights
                with Client(url, expect_space=err.value.current_space) as current:
                    current.encode(texts="a dog")
            finally:
                second.stop()
    finally:
        first.stop()


# --- AsyncClient -----------------------------------------------------------------------------


def test_the_async_client_gives_what_the_blocking_one_gives(server: Server):
    png = png_bytes(color=(5, 5, 250))

    async def run() -> tuple[np.ndarray, np.ndarray]:
        async with AsyncClient(server.url) as clip:
            vectors, ranking = await asyncio.gather(
                clip.encode(texts=["a dog"], images=[png]), clip.rank([image(png)], ["a", "b"])
            )
            return vectors, ranking.probabilities

    vectors, probs = asyncio.run(run())
    with Client(server.url) as clip:
        np.testing.assert_allclose(
            vectors, clip.encode(texts=["a dog"], images=[png]), rtol=1e-5, atol=1e-6
        )
        np.testing.assert_allclose(
            probs, clip.rank([image(png)], ["a", "b"]).probabilities, rtol=1e-5, atol=1e-6
        )


def test_the_async_client_retries_and_sends_its_key(guarded: Server):
    async def run() -> None:
        async with AsyncClient(guarded.url, api_key=KEY, retries=1) as clip:
            assert (await clip.encode(texts="a dog")).shape == (1, 32)
            with pytest.raises(APIError) as err:
                await clip.encode(texts=fresh_texts(2))
            assert err.value.status_code == 503

    before = _count_503(guarded)
    asyncio.run(run())
    assert _count_503(guarded) - before == 2
