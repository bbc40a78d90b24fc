"""The wire contract: msgspec Structs for every request and response body.

/encode and /rank are wire-compatible with BentoML's CLIP-API-service; /v1/embeddings follows
OpenAI's embeddings API.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec


class Base(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Shared base: unknown fields are an error, so typos do not pass silently."""


class Item(Base):
    """One thing to embed: exactly one of `text`, `img_uri` (http(s) or data: URI), `img_blob`."""

    text: str | None = None
    img_uri: str | None = None
    img_blob: Annotated[str | None, msgspec.Meta(description="base64-encoded image bytes")] = None


class EncodeOptions(Base):
    """The object form of /encode, for options the bare array cannot carry."""

    items: list[Item]
    model: str | None = None
    normalize: bool = False


# /encode accepts the seed's bare array or the object form.
EncodeRequest = list[Item] | EncodeOptions
Embeddings = list[list[float]]


class RankRequest(Base):
    """Score every candidate against every query."""

    queries: list[Item]
    candidates: list[Item]
    model: str | None = None


class RankResponse(Base):
    """One row per query, one column per candidate."""

    probabilities: list[list[float]]
    cosine_similarities: list[list[float]]


class BatchingInfo(Base):
    max_batch_size: int
    max_wait_ms: float
    max_queue: int
    compute_workers: int
    compute_threads: int


class ModelInfo(Base):
    spec: str
    architecture: str
    pretrained: str | None
    random_weights: bool
    embedding_dim: int
    image_size: int
    context_length: int
    quick_gelu: bool
    logit_scale: float
    device: str
    dtype: str
    compiled: str
    batching: BatchingInfo
    default: bool = False


class ModelsResponse(Base):
    models: list[ModelInfo]
    available: list[str] | None = None


class EmbeddingsRequest(Base):
    """OpenAI-compatible embeddings request (text input)."""

    input: str | list[str]
    model: str | None = None
    encoding_format: Literal["float"] = "float"
    user: str | None = None


class EmbeddingData(Base):
    embedding: list[float]
    index: int
    object: str = "embedding"


class Usage(Base):
    prompt_tokens: int
    total_tokens: int


class EmbeddingsResponse(msgspec.Struct):
    data: list[EmbeddingData]
    model: str
    usage: Usage
    object: str = "list"


class Health(Base):
    status: str
    detail: str | None = None


class ErrorBody(msgspec.Struct):
    """Every error: the HTTP status and a message naming the field and the problem."""

    status_code: int
    detail: str
