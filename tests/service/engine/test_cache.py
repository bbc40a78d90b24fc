"""The embedding cache: on its own (byte budget, LRU order, copies, metrics, threads), then
through real servers (shared by routes, keyed by image bytes, evictions, off at 0)."""

from __future__ import annotations

import base64
import threading
from collections.abc import Iterator

import httpx
import pytest
import torch
from clipserve.bench.scrape import MetricsPage
from clipserve.engine.cache import ENTRY_OVERHEAD, CacheKey, EmbeddingCache, digest
from clipserve.metrics import Metrics
from clipserve.settings import Settings

from tests.support.origin import Origin
from tests.support.pictures import png_b64, png_bytes
from tests.support.server import Server, start_server

DIM = 32
ENTRY = DIM * 4 + ENTRY_OVERHEAD


def key(n: int, modality: str = "text", model: str = "m") -> CacheKey:
    return CacheKey(model, modality, digest(f"content {n}".encode()))


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels or None) or 0.0


def test_a_stored_vector_comes_back_for_the_same_model_modality_and_content():
    cache = EmbeddingCache(10 * ENTRY, Metrics())
    row = torch.randn(DIM)
    cache.put(key(1), row, tokens=5)
    hit = cache.get(key(1))
    assert hit is not None and torch.equal(hit.vector, row) and hit.tokens == 5
    assert cache.get(key(1, model="other")) is None
    assert cache.get(key(1, modality="image")) is None
    assert cache.get(key(2)) is None


def test_the_least_recently_used_entries_go_once_the_byte_budget_is_spent():
    metrics = Metrics()
    cache = EmbeddingCache(3 * ENTRY, metrics)
    for n in range(3):
        cache.put(key(n), torch.randn(DIM))
    assert cache.get(key(0)) is not None  # 0 is now more recent than 1
    cache.put(key(3), torch.randn(DIM))
    assert cache.get(key(1)) is None
    assert all(cache.get(key(n)) is not None for n in (0, 2, 3))
    assert len(cache) == 3 and cache.bytes == 3 * ENTRY <= cache.max_bytes
    assert sample(metrics, "clipserve_cache_evictions_total") == 1
    assert sample(metrics, "clipserve_cache_bytes") == 3 * ENTRY
    assert sample(metrics, "clipserve_cache_capacity_bytes") == 3 * ENTRY


def test_storing_a_key_again_replaces_it_without_counting_it_twice():
    cache = EmbeddingCache(3 * ENTRY, Metrics())
    cache.put(key(1), torch.zeros(DIM))
    cache.put(key(1), torch.ones(DIM))
    assert len(cache) == 1 and cache.bytes == ENTRY
    hit = cache.get(key(1))
    assert hit is not None and torch.equal(hit.vector, torch.ones(DIM))


def test_a_row_is_copied_so_the_batch_it_came_from_is_not_kept_alive():
    cache = EmbeddingCache(10 * ENTRY, Metrics())
    batch = torch.randn(64, DIM)
    cache.put(key(1), batch[3])
    batch[3] = 0
    hit = cache.get(key(1))
    assert hit is not None and hit.vector.abs().sum() > 0
    assert hit.vector.untyped_storage().nbytes() == DIM * 4


def test_hits_and_misses_are_counted_by_model_and_modality():
    metrics = Metrics()
    cache = EmbeddingCache(10 * ENTRY, metrics)
    cache.put(key(1, "image"), torch.randn(DIM))
    cache.get(key(1, "image"))
    cache.get(key(1, "image"))
    cache.get(key(2, "image"))
    cache.get(key(1, "text"))
    labels = {"model": "m"}
    assert sample(metrics, "clipserve_cache_hits_total", **labels, modality="image") == 2
    assert sample(metrics, "clipserve_cache_misses_total", **labels, modality="image") == 1
    assert sample(metrics, "clipserve_cache_misses_total", **labels, modality="text") == 1


def test_a_budget_of_zero_turns_the_cache_off():
    metrics = Metrics()
    cache = EmbeddingCache(0, metrics)
    cache.put(key(1), torch.randn(DIM))
    assert not cache.enabled and len(cache) == 0 and cache.get(key(1)) is None
    assert sample(metrics, "clipserve_cache_misses_total", model="m", modality="text") == 0


def test_a_vector_larger_than_the_whole_budget_is_not_stored():
    cache = EmbeddingCache(ENTRY, Metrics())
    cache.put(key(1), torch.randn(DIM * 2))
    assert len(cache) == 0 and cache.bytes == 0


def test_threads_storing_and_reading_at_once_keep_the_byte_count_exact():
    cache = EmbeddingCache(50 * ENTRY, Metrics())

    def work(offset: int) -> None:
        for n in range(500):
            cache.put(key(offset + n % 80), torch.randn(DIM))
            cache.get(key(offset + (n * 7) % 80))

    threads = [threading.Thread(target=work, args=(k * 40,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(cache) == 50 and cache.bytes == 50 * ENTRY


# --- through a real server -------------------------------------------------------------------


def scrape(server: Server, name: str, **labels: str) -> float:
    """A sample of /metrics now, summed over the labels not given (0 if absent)."""
    return MetricsPage.get(server.url).value(name, **labels)


def encode(server: Server, items: list[dict]) -> list[list[float]]:
    r = httpx.post(f"{server.url}/encode", json=items, timeout=60)
    assert r.status_code == 200, r.text
    return r.json()


def test_a_repeated_item_is_answered_from_the_cache_with_the_same_vector(server: Server):
    items = [{"text": "cached caption one"}, {"img_blob": png_b64(color=(1, 2, 3))}]
    first = encode(server, items)
    computed = scrape(server, "clipserve_items_total", modality="text")
    hits = scrape(server, "clipserve_cache_hits_total", modality="image")
    again = encode(server, items)
    assert again == first
    assert scrape(server, "clipserve_items_total", modality="text") == computed
    assert scrape(server, "clipserve_cache_hits_total", modality="image") == hits + 1


def test_every_route_shares_the_cache(server: Server):
    texts = [{"text": "shared by routes a"}, {"text": "shared by routes b"}]
    encode(server, texts)
    hits = scrape(server, "clipserve_cache_hits_total", modality="text")
    r = httpx.post(
        f"{server.url}/rank",
        json={"queries": [{"img_blob": png_b64()}], "candidates": texts},
        timeout=60,
    )
    assert r.status_code == 200
    r = httpx.post(f"{server.url}/v1/embeddings", json={"input": "shared by routes a"}, timeout=60)
    assert r.status_code == 200
    assert scrape(server, "clipserve_cache_hits_total", modality="text") == hits + 3


def test_models_shows_the_cache_settings(server: Server):
    cache = httpx.get(f"{server.url}/models", timeout=30).json()["cache"]
    assert cache["max_mb"] == Settings().cache_mb and cache["enabled"] is True
    assert cache["entries"] > 0 and 0 < cache["used_bytes"] <= cache["max_mb"] * 2**20


@pytest.fixture(scope="module")
def small_cache() -> Iterator[Server]:
    """Room for about ten embeddings; may fetch images from loopback."""
    srv = start_server("--cache-mb", str(10 * ENTRY / 2**20), "--fetch-allow", "127.0.0.1")
    yield srv
    srv.stop()


def test_an_image_is_keyed_by_its_bytes_whether_fetched_or_inline(small_cache: Server):
    png = png_bytes(color=(9, 99, 199))
    with Origin() as origin:
        origin.add("/same.png", png, headers={"Content-Type": "image/png"})
        by_url = encode(small_cache, [{"img_uri": origin.url("/same.png")}])
        hits = scrape(small_cache, "clipserve_cache_hits_total", modality="image")
        inline = encode(small_cache, [{"img_blob": base64.b64encode(png).decode()}])
    assert inline == by_url
    assert scrape(small_cache, "clipserve_cache_hits_total", modality="image") == hits + 1


def test_the_budget_holds_and_old_entries_are_evicted(small_cache: Server):
    encode(small_cache, [{"text": f"eviction filler {n}"} for n in range(30)])
    assert scrape(small_cache, "clipserve_cache_evictions_total") >= 20
    held = scrape(small_cache, "clipserve_cache_bytes")
    assert 0 < held <= scrape(small_cache, "clipserve_cache_capacity_bytes") == 10 * ENTRY
    cache = httpx.get(f"{small_cache.url}/models", timeout=30).json()["cache"]
    assert cache["entries"] == 10 and cache["used_bytes"] == held


def test_a_zero_budget_turns_the_cache_off():
    srv = start_server("--cache-mb", "0")
    try:
        items = [{"text": "never cached"}]
        assert encode(srv, items) == encode(srv, items)
        assert scrape(srv, "clipserve_cache_hits_total") == 0
        assert scrape(srv, "clipserve_items_total", modality="text") >= 2  # computed twice
        cache = httpx.get(f"{srv.url}/models", timeout=30).json()["cache"]
        assert cache == {"max_mb": 0.0, "enabled": False, "entries": 0, "used_bytes": 0}
    finally:
        srv.stop()
