"""The dtype a model runs in on a CPU, and why: bf16 where the CPU has bf16 units and the model
agrees with fp32, fp32 otherwise, a refusal where bf16 would be emulated.

The one thing faked is what the CPU offers (`clipserve.models.cpu.bf16_support`, its seam): a CPU
with or without bf16 units is staged whatever this machine has. Everything else is real: the
tiny model loaded, cast and checked against fp32 (a CPU without bf16 units still computes bf16,
only slowly). The real server process reports what this machine's real detection found.
"""

from __future__ import annotations

import httpx
import pytest
import torch
from clipserve.models import ModelLoadError, add_model_configs, cpu, dtypes, load_model, parse_spec
from clipserve.models import precision as self_check

from tests.support.server import MODEL_CONFIGS, TINY, start_server

add_model_configs(str(MODEL_CONFIGS))

WITH_UNITS = cpu.judge(("AMX-BF16", "AVX512-BF16"), True, "2.14.1")
WITHOUT_UNITS = cpu.judge((), True, "2.14.1")


@pytest.fixture
def staged(monkeypatch: pytest.MonkeyPatch):
    """Stage what the CPU offers for bf16 (the detection's one seam)."""

    def stage(support: cpu.Bf16Support) -> None:
        monkeypatch.setattr(cpu, "bf16_support", lambda: support)

    return stage


def test_auto_plans_bf16_only_where_the_cpu_has_bf16_units(staged) -> None:
    staged(WITH_UNITS)
    with_units = dtypes.plan("auto", torch.device("cpu"))
    assert (with_units.precision, with_units.check_bf16) == ("fp32", True)
    assert "bf16 if the start-up self-check agrees" in with_units.describe()
    staged(WITHOUT_UNITS)
    without = dtypes.plan("auto", torch.device("cpu"))
    assert (without.precision, without.check_bf16) == ("fp32", False)
    assert without.describe() == f"fp32 (auto on cpu: {WITHOUT_UNITS.reason})"


def test_auto_serves_bf16_on_a_cpu_with_bf16_units_when_the_model_agrees(staged) -> None:
    staged(WITH_UNITS)
    model = load_model(parse_spec(TINY), device="cpu", dtype="auto")
    assert model.precision == "bf16" and model.info()["dtype"] == "bf16"
    assert model.dtype_reason.startswith(f"auto on cpu: {WITH_UNITS.reason}; bf16 agrees")
    assert "same ranking" in model.dtype_reason
    weights = list(model.model.parameters())
    assert {p.dtype for p in weights} == {torch.bfloat16}
    # cast outside inference mode: inference-tensor weights ran the bf16 text tower ~1.7x slower
    assert not any(p.is_inference() for p in weights)
    vectors = model.encode_image(torch.zeros(1, 3, 224, 224, dtype=torch.uint8))
    assert vectors.dtype == torch.float32  # the wire still carries float32


def test_auto_stays_fp32_on_a_cpu_without_bf16_units_and_says_why(staged) -> None:
    staged(WITHOUT_UNITS)
    model = load_model(parse_spec(TINY), device="cpu", dtype="auto")
    assert model.precision == "fp32"
    assert model.dtype_reason == f"auto on cpu: {WITHOUT_UNITS.reason}"


def test_explicit_bf16_is_refused_where_it_would_be_emulated(staged) -> None:
    staged(WITHOUT_UNITS)
    with pytest.raises(ModelLoadError) as err:
        load_model(parse_spec(TINY), device="cpu", dtype="bf16")
    assert str(err.value) == (
        f"dtype bf16 refused: {WITHOUT_UNITS.reason}; use --dtype fp32 or auto"
    )
    staged(WITH_UNITS)
    model = load_model(parse_spec(TINY), device="cpu", dtype="bf16")
    assert model.precision == "bf16" and model.dtype_reason.startswith("--dtype bf16; ")


def test_a_model_failing_the_self_check_stays_fp32_bit_for_bit(staged, monkeypatch) -> None:
    staged(WITH_UNITS)
    monkeypatch.setattr(self_check, "COSINE_BAR", 1.0 + 1e-6)  # a bar no bf16 vector meets
    model = load_model(parse_spec(TINY), device="cpu", dtype="auto")
    assert model.precision == "fp32"
    assert "but fp32: bf16 disagrees with fp32 on this model (min cosine 0.9" in model.dtype_reason
    assert {p.dtype for p in model.model.parameters()} == {torch.float32}
    # the fp32 weights were put back as they were: the same vectors as a plain fp32 load
    plain = load_model(parse_spec(TINY), device="cpu", dtype="fp32")
    tokens = model.tokenize(list(self_check.CHECK_TEXTS))
    pixels = self_check.check_images(224, 224)
    assert torch.equal(model.encode_text(tokens), plain.encode_text(tokens))
    assert torch.equal(model.encode_image(pixels), plain.encode_image(pixels))


def test_a_different_ranking_fails_the_check_even_with_close_vectors() -> None:
    texts = torch.tensor([[1.0, 0.2, 0.0]])
    images = torch.tensor([[1.0, 0.3, 0.0], [1.0, 0.0, 0.3], [0.0, 1.0, 0.0]])
    swapped = torch.tensor([[1.0, 0.0, 0.3], [1.0, 0.3, 0.0], [0.0, 1.0, 0.0]])
    same = self_check.compare((texts, images), (texts, images))
    assert same.same_ranking and same.min_cosine == pytest.approx(1.0)
    assert not self_check.compare((texts, images), (texts, swapped)).passes(0.5)
    # candidates closer than RANK_TIE are a tie: their order is not held against bf16
    near = torch.tensor([[1.0, 0.3, 0.0], [1.0, 0.3001, 0.0], [0.0, 1.0, 0.0]])
    flipped = near[[1, 0, 2]]
    assert self_check.compare((texts, near), (texts, flipped)).passes(0.999)


def test_fp16_and_unknown_dtypes_are_refused_on_cpu() -> None:
    with pytest.raises(ModelLoadError, match="dtype fp16 is not supported on CPU"):
        load_model(parse_spec(TINY), device="cpu", dtype="fp16")
    with pytest.raises(ModelLoadError, match="dtype 'fp8' is not one of auto, fp32, fp16, bf16"):
        load_model(parse_spec(TINY), device="cpu", dtype="fp8")


@pytest.mark.slow
def test_a_real_server_reports_auto_s_choice_and_why_in_models_and_its_log() -> None:
    support = cpu.bf16_support()  # this machine's, for real: the server process detects alone
    srv = start_server("--dtype", "auto")
    try:
        info = httpx.get(f"{srv.url}/models", timeout=30).json()["models"][0]
        log = srv.log()
    finally:
        srv.stop()
    assert info["dtype_reason"].startswith(f"auto on cpu: {support.reason}")
    # the tiny model's random weights come from a fixed seed: its verdict is the same each run
    assert info["dtype"] == ("bf16" if support.usable else "fp32")
    if support.usable:
        assert "bf16 agrees with fp32 (min cosine 0.9" in info["dtype_reason"]
    assert f"{TINY} ready on cpu ({info['dtype']}: {info['dtype_reason']})" in log
