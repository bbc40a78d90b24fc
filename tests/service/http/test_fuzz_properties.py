"""Property-based fuzzing of /classify and /v1/embeddings against a real server process.

schemathesis (test_fuzz.py) generates from the OpenAPI schema alone: nearly every /classify body
it makes is a 400 (no template holds `{}`, no image decodes), so prompt expansion, its limits,
the ensemble and OpenAI's encodings go unexercised. Here hypothesis builds requests that are
good or have one given thing wrong (each kind in turn), with sizes around every limit, and
each answer is checked against what the request deserves: served and well-formed when nothing
is wrong, the status its fault calls for otherwise, with a message naming the field; never a
5xx.
"""

from __future__ import annotations

import base64
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import numpy as np
import pytest
from clipserve.models import imagenet_templates
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tests.support.pictures import png_b64
from tests.support.server import TINY, Server, start_server

MAX_ITEMS, MAX_TEXT_CHARS = 8, 1000
PROMPTS, PROMPT_BYTES = MAX_ITEMS * 100, MAX_ITEMS * 16 * 1024  # classify.py's limits
PART_CHARS, USER_CHARS, TOKEN_IDS = 2048, 1024, 8192  # the schema's and OpenAI route's bounds
DIM, VOCAB = 32, 49408  # the tiny model's
FUZZ = settings(
    max_examples=20,  # per kind of fault
    deadline=None,
    derandomize=True,  # the same cases every run, as schemathesis runs here
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
# How a message names its field: "labels[2]: ...", "labels x templates: ...",
# "images[1].img_blob: ...", or msgspec's "... - at `$.labels[3]`".
FIELD = re.compile(r"^(images|labels|templates|model)\b|at `\$\.\w")


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    srv = start_server("--max-items", str(MAX_ITEMS), "--max-text-chars", str(MAX_TEXT_CHARS))
    yield srv
    srv.stop()


@dataclass
class Case:
    """A request body, what is wrong with it (nothing: it must be served), and how many
    results it asks for."""

    body: dict
    wrong: set[str]
    count: int = 0


def _label(wrong: set[str]) -> str:
    return "+".join(sorted(wrong)) or "a good request"


# -- /classify --------------------------------------------------------------------------------

_CHARS = st.sampled_from(["a", "b", " ", "{}", "{", "}", "\u00e9", "\u20ac", "\U0001f600", "\n"])
_SHORT = st.lists(_CHARS, max_size=6).map("".join)
_LABEL = st.lists(_CHARS, min_size=1, max_size=8).map("".join).filter(str.strip)
_TEMPLATE = st.builds(lambda a, b: f"{a}{{}}{b}", _SHORT, _SHORT)
_BAD_IMAGES = [{"img_blob": "!!not base64"}, {"text": "a dog"}, {}, {"img_uri": "data:,nope"}]
# What a request may have wrong (each is fuzzed; near a limit it may be a size or fine).
_FAULTS = [
    None, "bad-image", "no-images", "blank-label", "repeated-label", "many-labels",
    "no-placeholder", "no-templates", "long-part", "long-prompt", "many-bytes", "unknown-model",
]  # fmt: skip


@st.composite
def _image(draw: st.DrawFn) -> dict:
    blob = png_b64(color=draw(st.tuples(*[st.integers(0, 255)] * 3)))
    return draw(st.sampled_from([{"img_blob": blob}, {"img_uri": f"data:image/png;base64,{blob}"}]))


@st.composite
def classify_cases(draw: st.DrawFn, fault: str | None) -> Case:
    images = draw(st.lists(_image(), min_size=1, max_size=3))
    labels = draw(st.lists(_LABEL, min_size=1, max_size=4, unique=True))
    templates = draw(st.none() | st.lists(_TEMPLATE, min_size=1, max_size=4))
    model = draw(st.sampled_from([None, None, TINY, "Tiny-ViT-T"]))
    if fault == "bad-image":
        images[draw(st.integers(0, len(images) - 1))] = draw(st.sampled_from(_BAD_IMAGES))
    elif fault == "no-images":
        images = []
    elif fault in ("blank-label", "repeated-label"):
        labels.append(" \n" if fault == "blank-label" else labels[0])
    elif fault == "many-labels":
        labels += [f"more {i}" for i in range(MAX_ITEMS)]
    elif fault == "no-placeholder":
        templates = [*(templates or []), "no placeholder"]
    elif fault == "no-templates":
        templates = []
    elif fault in ("long-part", "long-prompt"):  # over the schema's bound; near the text limit
        pad = PART_CHARS + 1 if fault == "long-part" else draw(st.integers(940, 1010))
        labels[0] += "x" * pad
    elif fault == "many-bytes":  # around the byte budget, each prompt within the text limit
        labels = [f"{i} " + "x" * 100 for i in range(MAX_ITEMS)]
        pad = draw(st.integers(700, 890))
        templates = [f"{k} {{}}" + "y" * pad for k in range(draw(st.integers(14, 24)))]
    elif fault == "unknown-model":
        model = "ViT-Nope:x"
    body = {"images": images, "labels": labels, "templates": templates, "model": model}
    body = {k: v for k, v in body.items() if v is not None}
    return Case(body, _classify_faults(body), count=len(images))


def _classify_faults(body: dict) -> set[str]:
    """What is wrong with a /classify body, judged from the documented limits alone."""
    images, labels, templates = body["images"], body["labels"], body.get("templates")
    wrong = set()
    if not images or any(item in _BAD_IMAGES for item in images):
        wrong.add("images")
    if any(not s.strip() for s in labels) or len(set(labels)) < len(labels):
        wrong.add("labels")
    if templates is not None and (not templates or any("{}" not in t for t in templates)):
        wrong.add("templates")
    if any(len(s) > PART_CHARS for s in labels + (templates or [])):
        wrong.add("schema")
    if body.get("model") == "ViT-Nope:x":
        wrong.add("model")
    prompts = [
        t.replace("{}", label)
        for label in labels
        for t in (imagenet_templates() if templates is None else templates)
    ]
    if len(labels) > MAX_ITEMS or (
        prompts
        and (
            len(prompts) > PROMPTS
            or max(map(len, prompts)) > MAX_TEXT_CHARS
            or sum(len(p.encode()) for p in prompts) > PROMPT_BYTES
        )
    ):
        wrong.add("size")
    return wrong


@pytest.mark.slow
@pytest.mark.parametrize("fault", _FAULTS)
@FUZZ
@given(data=st.data())
def test_classify_answers_what_each_request_deserves(
    server: Server, fault: str | None, data: st.DataObject
):
    case = data.draw(classify_cases(fault))
    r = httpx.post(f"{server.url}/classify", json=case.body, timeout=120)
    event(f"HTTP {r.status_code} for {_label(case.wrong)}")
    assert r.status_code < 500, r.text
    if not case.wrong:
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["objective"] == "softmax" and len(body["predictions"]) == case.count
        for row in body["predictions"]:
            assert sorted(p["label"] for p in row) == sorted(case.body["labels"])
            probs = [p["probability"] for p in row]
            assert probs == sorted(probs, reverse=True)
            assert math.isclose(sum(probs), 1, abs_tol=1e-4)
        return
    assert r.status_code in (400, 404, 413), r.text
    detail = r.json()["detail"]
    assert FIELD.search(detail), detail
    if case.wrong == {"size"}:
        assert r.status_code == 413, detail
    elif case.wrong == {"model"}:
        assert r.status_code == 404, detail
    elif "size" not in case.wrong and "model" not in case.wrong:
        assert r.status_code == 400, detail


# -- /v1/embeddings ---------------------------------------------------------------------------

_TOKENS = st.lists(st.integers(0, VOCAB - 1), min_size=1, max_size=80)
# Each fault and the status it calls for.
_EMBED_FAULTS = {
    "bad-image": 400,
    "bad-token": 400,
    "many-tokens": 413,
    "long-text": 413,
    "no-input": 400,
    "many-inputs": 413,
    "dimensions": 400,
    "long-user": 400,
    "unknown-model": 404,
}


@st.composite
def _input(draw: st.DrawFn) -> object:
    """One good element of a list `input`: a text, an image data: URI or token ids."""
    kind = draw(st.sampled_from(["text", "image", "ids"]))
    if kind == "text":
        return draw(_SHORT) + "x" * draw(st.sampled_from([0, 0, 20, 400]))
    if kind == "image":
        return "data:image/png;base64," + png_b64(color=(draw(st.integers(0, 255)), 9, 9))
    return draw(_TOKENS)


@st.composite
def embeddings_cases(draw: st.DrawFn, fault: str | None) -> Case:
    # `input`: a list of texts, images and token lists; or one string; or one token list.
    inputs = draw(
        st.lists(_input(), min_size=1, max_size=4)
        | _SHORT.map(lambda s: [s])
        | _TOKENS.map(lambda ids: [ids])
    )
    one = len(inputs) == 1 and draw(st.booleans())  # sent bare, not in a list
    body: dict = {
        "model": draw(st.sampled_from([None, None, TINY])),
        "encoding_format": draw(st.sampled_from([None, "float", "base64"])),
        "dimensions": draw(st.sampled_from([None, DIM])),
        "user": draw(st.sampled_from([None, "u-123"])),
    }
    k = draw(st.integers(0, len(inputs) - 1))
    if fault == "bad-image":
        inputs[k] = "data:image/png;base64," + base64.b64encode(b"not a png").decode()
    elif fault == "bad-token":
        inputs[k] = [*draw(_TOKENS), VOCAB + draw(st.integers(0, 10))]
    elif fault == "many-tokens":
        inputs[k] = [1] * (TOKEN_IDS + 1)
    elif fault == "long-text":
        inputs[k] = "x" * (MAX_TEXT_CHARS + draw(st.integers(1, 50)))
    elif fault in ("no-input", "many-inputs"):
        inputs = [] if fault == "no-input" else [f"text {i}" for i in range(MAX_ITEMS + 1)]
        one = False
    elif fault == "dimensions":
        body["dimensions"] = 16
    elif fault == "long-user":
        body["user"] = "u" * (USER_CHARS + 1)
    elif fault == "unknown-model":
        body["model"] = "text-embedding-3-small"
    body["input"] = inputs[0] if one else inputs
    body = {key: v for key, v in body.items() if v is not None}
    return Case(body, {fault} if fault else set(), count=len(inputs))


@pytest.mark.slow
@pytest.mark.parametrize("fault", [None, *_EMBED_FAULTS])
@FUZZ
@given(data=st.data())
def test_openai_embeddings_answer_what_each_request_deserves(
    server: Server, fault: str | None, data: st.DataObject
):
    case = data.draw(embeddings_cases(fault))
    r = httpx.post(f"{server.url}/v1/embeddings", json=case.body, timeout=120)
    event(f"HTTP {r.status_code} for {_label(case.wrong)}")
    assert r.status_code < 500, r.text
    if not case.wrong:
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["object"] == "list" and body["model"] == TINY
        assert [d["index"] for d in body["data"]] == list(range(case.count))
        for d in body["data"]:
            vector = d["embedding"]
            if case.body.get("encoding_format") == "base64":
                vector = np.frombuffer(base64.b64decode(vector), dtype="<f4")
            assert len(vector) == DIM
            assert math.isclose(float(np.linalg.norm(vector)), 1, abs_tol=1e-3)
        assert body["usage"]["prompt_tokens"] == body["usage"]["total_tokens"] >= 0
        return
    assert r.status_code == _EMBED_FAULTS[next(iter(case.wrong))], r.text
    error = r.json()["error"]  # OpenAI's shape, the field it is about as `param`
    assert set(error) == {"message", "type", "param", "code"}, error
    assert error["type"] == "invalid_request_error" and error["param"], error
