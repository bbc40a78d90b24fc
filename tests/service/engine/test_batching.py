"""Dynamic batching through the real server: fewer forward passes than items, same results."""

from __future__ import annotations

import asyncio
import json

import pytest
from clipserve.bench.loadgen import RawConnection
from clipserve.bench.scrape import MetricsPage

from tests.support.inprocess import in_process
from tests.support.pictures import png_b64
from tests.support.server import TINY, start_server


def _passes(metrics_text: str, modality: str) -> tuple[float, float]:
    """(forward passes, items) so far for a modality, from the batch-size histogram."""
    page = MetricsPage(metrics_text)
    passes, items = (
        page.value(f"clipserve_batch_size_{part}", modality=modality, model=TINY)
        for part in ("count", "sum")
    )
    return passes, items


async def _post_at_once(url: str, bodies: list[bytes]) -> list[list[float]]:
    """POST every body at the same moment, each on its own open keep-alive connection.

    Connections are opened first, so the requests themselves reach the server within a
    fraction of a millisecond: concurrent for the batcher, not a trickle (32 client threads
    sharing the GIL send theirs milliseconds apart, and a lone item is served at once).
    """
    conns = [RawConnection(url, "/encode", {"content-type": "application/json"}) for _ in bodies]
    try:
        await asyncio.gather(*(c.connect() for c in conns))
        answers = await asyncio.gather(*(c.post(b) for c, b in zip(conns, bodies, strict=True)))
    finally:
        for c in conns:
            c.close()
    assert all(status == 200 for status, _ in answers)
    return [json.loads(data)[0] for _, data in answers]


@pytest.mark.slow
def test_concurrent_requests_share_forward_passes_and_match_unbatched_results():
    # cache off: the concurrent round repeats the items embedded alone, and would be all hits
    srv = start_server("--max-wait-ms", "200", "--max-batch-size", "32", "--cache-mb", "0")
    texts = [f"a photo of thing number {i}" for i in range(24)]
    images = [png_b64(color=(i * 10, 255 - i * 10, 7)) for i in range(8)]
    try:
        with srv.client() as c:
            alone_text = [c.post("/encode", json=[{"text": t}]).json()[0] for t in texts]
            alone_img = [c.post("/encode", json=[{"img_blob": b}]).json()[0] for b in images]
            before_t, before_i = (
                _passes(c.get("/metrics").text, "text"),
                _passes(c.get("/metrics").text, "image"),
            )
            together = asyncio.run(
                _post_at_once(
                    srv.url,
                    [json.dumps([{"text": t}]).encode() for t in texts]
                    + [json.dumps([{"img_blob": b}]).encode() for b in images],
                )
            )
            together_text, together_img = together[: len(texts)], together[len(texts) :]
            metrics = c.get("/metrics").text
    finally:
        srv.stop()
    after_t, after_i = _passes(metrics, "text"), _passes(metrics, "image")
    text_passes, text_items = after_t[0] - before_t[0], after_t[1] - before_t[1]
    img_passes, img_items = after_i[0] - before_i[0], after_i[1] - before_i[1]
    assert text_items == len(texts) and img_items == len(images)
    assert text_passes < text_items / 2, (text_passes, text_items)
    assert img_passes < img_items, (img_passes, img_items)
    for a, b in zip(alone_text + alone_img, together_text + together_img, strict=True):
        assert a == pytest.approx(b, abs=1e-4)


def test_a_full_queue_answers_503_with_retry_after():
    with in_process(max_queue=4) as c:  # one request: no batching across connections
        r = c.post("/encode", json=[{"text": str(i)} for i in range(5)])
        ok = c.post("/encode", json=[{"text": str(i)} for i in range(4)])
    assert r.status_code == 503 and r.headers["retry-after"] == "1"
    assert "queue is full" in r.json()["detail"]
    assert ok.status_code == 200
