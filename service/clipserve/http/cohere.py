"""Cohere's v2 embed and rerank APIs over clipserve, so its SDKs work pointed at the server.

- `model` is a served spec or architecture, as on /v1/ (Cohere's own names are a 404).
- Images are `data:image/...;base64,` URIs, as Cohere takes them; an input of several parts
  (`inputs[i].content`) is one vector: the mean of its parts' normalized vectors, renormalized,
  the way /classify joins a label's prompts (CLIP has no joint text-and-image encoder).
- Vectors are L2-normalized; each embedding type is engine/embedding_types.py's transform, and
  Cohere's `base64` is base64 of the little-endian float32 bytes.
- `truncate` and `max_tokens` cut texts by the model's tokenizer (engine/truncation.py).
- Rerank scores each document by the model's own objective, as /rank's `scores`.
Errors name Cohere's fields (`texts[2]`, `documents[0]`), in Cohere's shape (errors.error_body).
"""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import Callable
from functools import partial

import numpy as np

from clipserve.engine import embedding_types
from clipserve.engine.engine import Embedded, Engine
from clipserve.engine.inputs import Tokens
from clipserve.engine.truncation import Side, fitted
from clipserve.errors import ClipServeError, InvalidInput
from clipserve.http.cohere_schemas import (
    EMBEDDING_TYPES,
    BilledUnits,
    EmbeddingsByType,
    EmbedRequest,
    EmbedResponse,
    Meta,
    RerankDocument,
    RerankRequest,
    RerankResponse,
    RerankResult,
    TextContent,
)
from clipserve.http.openai import IMAGE_URI, check_dimensions
from clipserve.models import ClipModel
from clipserve.schemas import Item

SOURCES = ("texts", "images", "inputs")
# The engine's messages start with the list and item they are about ("items[2].img_uri: ...",
# "candidates: is empty ..."): told again in the request's own terms.
_PLACE = re.compile(r"^([a-z+]+)(?:\[(\d+)\](?:\.\w+)?)?: ")


class _Parts:
    """A request's texts and images, flattened for the engine, with where each came from."""

    def __init__(
        self,
        engine: Engine,
        model: ClipModel,
        truncate: Side,
        max_tokens: int | None,
        budget_field: str = "max_tokens",
    ) -> None:
        self.items: list[Item | Tokens] = []
        self.places: list[str] = []
        self.owners: list[int] = []  # the input each part belongs to
        self._model = model
        self._truncate: Side = truncate
        self._max_tokens = max_tokens
        self._budget_field = budget_field
        self._max_chars = engine.settings.max_text_chars

    def text(self, text: str, place: str, owner: int) -> None:
        self._add(
            fitted(
                self._model,
                text,
                truncate=self._truncate,
                max_tokens=self._max_tokens,
                max_chars=self._max_chars,
                where=place,
                budget_field=self._budget_field,
            ),
            place,
            owner,
        )

    def image(self, uri: str, place: str, owner: int) -> None:
        if not uri.startswith(IMAGE_URI):
            raise InvalidInput(
                f"{place}: is not a data URI; Cohere's API takes an image as "
                "data:image/<format>;base64,<bytes> (image URLs: /encode's img_uri)"
            )
        self._add(Item(img_uri=uri), place, owner)

    async def fill(self, adding: Callable[[], None]) -> None:
        """Run `adding` (calls of text and image): in a thread when texts are tokenized here,
        since CLIP's BPE is Python (~20 ms for 10,000 characters) and the loop serves others."""
        if self._truncate == "END" and self._max_tokens is None:
            adding()
        else:
            await asyncio.to_thread(adding)

    def _add(self, item: Item | Tokens, place: str, owner: int) -> None:
        self.items.append(item)
        self.places.append(place)
        self.owners.append(owner)


async def embed(engine: Engine, request: EmbedRequest) -> tuple[str, EmbedResponse]:
    """/v2/embed: every embedding type asked for, of the same normalized vectors; and the
    model that made them."""
    source = _source(request)
    kinds = _types(request.embedding_types or ["float"])
    model = engine.models[engine.served(request.model)]
    check_dimensions(request.output_dimension, model.spec.raw, model.embed_dim, "output_dimension")
    parts = _Parts(engine, model, request.truncate, request.max_tokens)
    await parts.fill(partial(_embed_parts, parts, request))
    try:
        out = await engine.encode(parts.items, model=model.spec.raw, normalize=True, where="items")
    except ClipServeError as exc:
        _relocate(exc, {"items": (source, parts.places)})
        raise
    vectors = _fused(out, parts.owners) if source == "inputs" else out.vectors.numpy()
    images = sum(isinstance(p, Item) and p.img_uri is not None for p in parts.items)
    return out.model, EmbedResponse(
        id=str(uuid.uuid4()),
        embeddings=_by_type(vectors, kinds),
        meta=Meta(BilledUnits(input_tokens=out.tokens, images=images)),
        texts=request.texts,
    )


async def rerank(engine: Engine, request: RerankRequest) -> tuple[str, RerankResponse]:
    """/v2/rerank: the documents by the model's own score for the query, best first; and
    the model that scored them."""
    model = engine.models[engine.served(request.model)]
    query = _Parts(engine, model, "END", None)
    docs = _Parts(engine, model, "END", request.max_tokens_per_doc, "max_tokens_per_doc")
    _add_string(query, request.query, "query", 0)
    await docs.fill(partial(_rerank_parts, docs, request.documents))
    try:
        ranked = await engine.rank(query.items, docs.items, model=model.spec.raw)
    except ClipServeError as exc:
        places = {
            "queries": ("query", ["query"]),
            "candidates": ("documents", docs.places),
            "queries+candidates": ("documents", docs.places),
        }
        _relocate(exc, places)
        raise
    scores: list[float] = ranked.scores[0].tolist()
    order = sorted(range(len(scores)), key=lambda j: (-scores[j], j))[: request.top_n]
    results = [
        RerankResult(
            index=j,
            relevance_score=scores[j],
            document=RerankDocument(request.documents[j]) if request.return_documents else None,
        )
        for j in order
    ]
    meta = Meta(BilledUnits())
    return ranked.model, RerankResponse(id=str(uuid.uuid4()), results=results, meta=meta)


def _embed_parts(parts: _Parts, request: EmbedRequest) -> None:
    for i, text in enumerate(request.texts or ()):
        parts.text(text, f"texts[{i}]", i)
    for i, uri in enumerate(request.images or ()):
        parts.image(uri, f"images[{i}]", i)
    for i, one in enumerate(request.inputs or ()):
        for j, part in enumerate(one.content):
            place = f"inputs[{i}].content[{j}]"
            if isinstance(part, TextContent):
                parts.text(part.text, f"{place}.text", i)
            else:
                parts.image(part.image_url.url, f"{place}.image_url.url", i)


def _rerank_parts(parts: _Parts, documents: list[str]) -> None:
    for i, doc in enumerate(documents):
        _add_string(parts, doc, f"documents[{i}]", i)


def _add_string(parts: _Parts, value: str, place: str, owner: int) -> None:
    """A Cohere string: a data:image/ URI is an image, anything else a text."""
    (parts.image if value.startswith(IMAGE_URI) else parts.text)(value, place, owner)


def _source(request: EmbedRequest) -> str:
    given = [f for f in SOURCES if getattr(request, f) is not None]
    if len(given) != 1:
        where, problem = (
            ("texts", "is missing") if not given else (given[1], f"is beside {given[0]}")
        )
        raise InvalidInput(f"{where}: {problem}; give exactly one of texts, images or inputs")
    return given[0]


def _types(kinds: list[str]) -> list[str]:
    for i, kind in enumerate(kinds):
        if kind not in EMBEDDING_TYPES:
            raise InvalidInput(
                f"embedding_types[{i}]: {kind!r} is not an embedding type; give any of "
                f"{', '.join(EMBEDDING_TYPES)}"
            )
    return kinds


def _fused(out: Embedded, owners: list[int]) -> np.ndarray:
    """One vector per input: the mean of its parts' (normalized) vectors, renormalized."""
    rows = out.vectors.numpy()
    index = np.asarray(owners)
    sums = np.zeros((index.max() + 1, rows.shape[1]), dtype=np.float32)
    np.add.at(sums, index, rows)
    return sums / np.linalg.norm(sums, axis=1, keepdims=True).clip(min=1e-12)


def _by_type(vectors: np.ndarray, kinds: list[str]) -> EmbeddingsByType:
    """Each type asked for (each once), of the same vectors."""
    out: dict[str, object] = {}
    for i, kind in enumerate(kinds):
        where = f"embedding_types[{i}]"
        if kind == "base64":  # Cohere's: the float32 bytes
            out[kind] = embedding_types.encoded(vectors, "float", base64=True, where=where)
        else:
            name = "float_" if kind == "float" else kind
            out[name] = embedding_types.encoded(vectors, kind, base64=False, where=where)
    return EmbeddingsByType(**out)  # type: ignore[arg-type]


def _relocate(exc: ClipServeError, places: dict[str, tuple[str, list[str]]]) -> None:
    """Rewrite the engine's place in `exc`'s message ("items[2].text") as the request's own
    ("texts[2]"); the exception keeps its type, status and headers."""
    m = _PLACE.match(exc.message)
    if m is None or m[1] not in places:
        return
    whole, each = places[m[1]]
    where = each[int(m[2])] if m[2] is not None else whole
    exc.message = f"{where}: {exc.message[m.end() :]}"
    exc.args = (exc.message,)
