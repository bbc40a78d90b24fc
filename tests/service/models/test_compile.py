"""`--compile`: torch.compile (inductor, a real C++ build on this CPU) of the model's towers.

On CUDA the same flag also offers CUDA graphs (reduce-overhead); that mode cannot run here, so
the CPU tests use `default`, which goes through the same code path.
"""

from __future__ import annotations

import base64

import pytest
import torch
from clipserve import models
from clipserve.bench.ceiling import measure_ceiling
from clipserve.models import ModelLoadError, load_model, parse_spec

from tests.support.pictures import png_bytes
from tests.support.server import MODEL_CONFIGS, TINY, start_server

models.add_model_configs(str(MODEL_CONFIGS))


@pytest.mark.slow
def test_compiled_towers_give_the_eager_embeddings_for_any_batch_and_text_length():
    model = load_model(parse_spec(TINY))
    gen = torch.Generator().manual_seed(0)
    pixels = torch.randint(0, 256, (3, 3, 224, 224), dtype=torch.uint8, generator=gen)
    texts = ["a cat", "a dog asleep on a mat in the afternoon sun", "x"]
    cases = [(pixels[:1], texts[:1]), (pixels, texts), (pixels[:2], texts[1:])]
    eager = [(model.encode_image(p), model.encode_text(model.tokenize(t))) for p, t in cases]
    model.compile("default")
    assert model.compiled == "default" and model.info()["compiled"] == "default"
    assert all(
        isinstance(getattr(model.model, tower), torch._dynamo.eval_frame.OptimizedModule)
        for tower in ("visual", "transformer")
    )
    for (p, t), (image, text) in zip(cases, eager, strict=True):
        torch.testing.assert_close(model.encode_image(p), image, rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(model.encode_text(model.tokenize(t)), text, rtol=1e-4, atol=1e-5)


def test_an_unknown_compile_mode_is_refused_with_the_choices():
    model = load_model(parse_spec(TINY))
    with pytest.raises(ModelLoadError, match="reduce-overhead"):
        model.compile("fastest")
    assert model.compiled == "off"


@pytest.mark.slow
def test_a_compiled_server_reports_it_and_serves_with_one_worker():
    server = start_server("--compile", "default", timeout=600)
    try:
        with server.client() as c:
            (info,) = c.get("/models").json()["models"]
            blob = base64.b64encode(png_bytes()).decode()
            r = c.post("/encode", json=[{"text": "a cat"}, {"img_blob": blob}])
    finally:
        server.stop()
    assert info["compiled"] == "default" and info["batching"]["compute_workers"] == 1
    assert r.status_code == 200 and [len(v) for v in r.json()] == [32, 32]


def test_compile_with_several_workers_is_refused_at_start():
    server = start_server("--compile", "default", "--compute-workers", "2", wait_ready=False)
    try:
        assert server.proc.wait(120) == 1
    finally:
        server.stop()
    assert "--compile default needs --compute-workers 1" in server.log()


@pytest.mark.slow
def test_the_bench_ceiling_is_measured_compiled_when_the_server_is():
    c = measure_ceiling(
        TINY, batch_sizes=(1, 2), min_s=0.01, compile="default", model_config_dir=str(MODEL_CONFIGS)
    )
    # compiled: one pass at a time, as the server runs it
    assert c["compiled"] == "default" and c["layouts"] == [f"1x{c['torch_threads']}"]
    assert c["image"]["items_per_s"] > 0 and c["text"]["batch1_ms"] > 0
