"""The wire contract: msgspec Structs for every request and response body.

/encode and /rank are wire-compatible with BentoML's CLIP-API-service; /v1/embeddings follows
OpenAI's embeddings API.
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec


class Base(msgspec.Struct, forbid_unknown_fields=True, omit_defaults=True):
    """Shared base: unknown fields are an error, so typos do not pass silently."""


# Every string a request carries is bounded. Texts and images have their settings
# (--max-text-chars, --max-image-bytes), checked before any work; the rest are bounded here, so
# an oversize one is a 400 naming its field before the request does anything.
ModelName = Annotated[
    str,
    msgspec.Meta(
        max_length=8192,  # a served spec can be a checkpoint URL (fetch.MAX_URL_CHARS)
        description="a served model's spec or architecture (see /models); default: the first",
    ),
]
# A label or template: CLIP reads 77 tokens (~300 characters), so 2,048 is already past use.
PromptPart = Annotated[str, msgspec.Meta(max_length=2048)]
# An 8x8 red PNG: the OpenAPI examples work as they are (Swagger UI's "Try it out", and the
# requests schemathesis sends first).
EXAMPLE_PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAgAAAAICAIAAABLbSncAAAAFUlEQVR42mO8o6HBgA0wMeAAg1MCAO/EATxl"
    "NiNaAAAAAElFTkSuQmCC"
)


class Item(Base):
    """One thing to embed: exactly one of `text`, `img_uri` (http(s) or data: URI), `img_blob`."""

    text: Annotated[
        str | None, msgspec.Meta(description="at most --max-text-chars characters (413 above)")
    ] = None
    img_uri: Annotated[
        str | None,
        msgspec.Meta(
            description="an http(s) URL of at most 8,192 characters, or a data: URI of an image "
            "of at most --max-image-bytes (413 above)"
        ),
    ] = None
    img_blob: Annotated[
        str | None,
        msgspec.Meta(
            description="base64-encoded image bytes, at most --max-image-bytes (413 above)"
        ),
    ] = None


# What a vector is sent as (engine/embedding_types.py has the transforms): float32; float16;
# int8 = rint(clip(x, -1, 1) * 127); uint8 = rint((clip(x, -1, 1) + 1) * 127.5); ubinary =
# the sign bits (x > 0) packed 8 per byte, first dimension in the high bit (numpy.packbits);
# binary = ubinary - 128 as int8 (sentence-transformers' and Cohere's conventions).
EmbeddingType = Annotated[
    Literal["float", "float16", "int8", "uint8", "binary", "ubinary"],
    msgspec.Meta(
        description="float (float32), float16, int8 = rint(clip(x, -1, 1) x 127), uint8 = "
        "rint((clip(x, -1, 1) + 1) x 127.5), ubinary = sign bits (x > 0) packed 8 per byte, "
        "big-endian bit order (numpy.packbits), binary = ubinary - 128 as int8; int8 and uint8 "
        "are of the L2-normalized vector; binary types need a dimension divisible by 8"
    ),
]


class EncodeOptions(Base):
    """The object form of /encode, for options the bare array cannot carry."""

    items: list[Item]
    model: ModelName | None = None
    normalize: Annotated[
        bool | None,
        msgspec.Meta(
            description="L2-normalize; default false, but true for int8 and uint8, whose "
            "fixed [-1, 1] scale needs normalized vectors (false with them is a 400)"
        ),
    ] = None
    embedding_type: EmbeddingType = "float"
    encoding: Annotated[
        Literal["json", "base64"],
        msgspec.Meta(
            description="json: each vector an array of numbers; base64: each a string, base64 "
            "of the vector's raw little-endian bytes (dim x 4 for float, x 2 for float16, "
            "dim / 8 for binary types)"
        ),
    ] = "json"


# /encode accepts the seed's bare array or the object form; the bare array answers float32
# numbers, as CLIP-API-service does.
EncodeRequest = list[Item] | EncodeOptions
Embeddings = list[list[float]] | list[str]


class RankRequest(Base):
    """Score every candidate against every query."""

    queries: list[Item]
    candidates: list[Item]
    model: ModelName | None = None


class RankResponse(Base):
    """One row per query, one column per candidate."""

    probabilities: Annotated[
        list[list[float]],
        msgspec.Meta(
            description="softmax(logit_scale x cosine) over each row's candidates, for every "
            "model (CLIP-API-service's field)"
        ),
    ]
    cosine_similarities: list[list[float]]
    scores: Annotated[
        list[list[float]],
        msgspec.Meta(
            description="the model's own scores: equal to probabilities for softmax-trained "
            "models (CLIP); sigmoid(logit_scale x cosine + logit_bias) per pair for "
            "sigmoid-trained ones (SigLIP), where each pair is judged on its own"
        ),
    ]
    objective: Annotated[
        Literal["softmax", "sigmoid"], msgspec.Meta(description="which rule gave `scores`")
    ]


class BatchingInfo(Base):
    max_batch_size: int
    max_wait_ms: float
    max_queue: int
    compute_workers: int
    compute_threads: int


class PreprocessInfo(Base):
    """How images are prepared for the model (open_clip's preprocess config for it)."""

    size: Annotated[list[int], msgspec.Meta(description="[height, width]")]
    resize_mode: Annotated[
        Literal["shortest", "longest", "squash"],
        msgspec.Meta(
            description="shortest: shortest side to size, center crop; longest: longest side "
            "to size, pad with fill_color; squash: both sides to size, aspect not kept"
        ),
    ]
    interpolation: Literal["bicubic", "bilinear"]
    mean: list[float]
    std: list[float]
    fill_color: int
    source: Annotated[str, msgspec.Meta(description="where this config came from")]


class TokenizerInfo(Base):
    """The model's tokenizer."""

    kind: Annotated[
        Literal["clip-bpe", "huggingface"],
        msgspec.Meta(description="open_clip's own BPE, or a Hugging Face tokenizer"),
    ]
    name: Annotated[str, msgspec.Meta(description="the HF repo, or open_clip's class")]
    context_length: int


class SpaceInfo(Base):
    """The embedding space: vectors with equal digests can be compared (the X-Clip-Space
    header of every embedding response)."""

    digest: Annotated[
        str,
        msgspec.Meta(
            description="sha256 over the architecture's config, QuickGELU, the weights' content, "
            "the preprocessing and the tokenizer; `random:...` for random weights"
        ),
    ]
    weights: Annotated[
        str, msgspec.Meta(description="sha256:<hex> of the weights file, or `random (seed 0)`")
    ]
    revision: Annotated[
        str | None, msgspec.Meta(description="the hub commit the weights came from, if any")
    ]


class ModelInfo(Base):
    spec: str
    architecture: str
    pretrained: str | None
    random_weights: bool
    embedding_dim: int
    image_size: Annotated[int, msgspec.Meta(description="input height; preprocess.size has both")]
    context_length: int
    quick_gelu: bool
    logit_scale: float
    logit_bias: float | None
    objective: Annotated[
        Literal["softmax", "sigmoid"],
        msgspec.Meta(description="how /rank's scores are computed (see RankResponse.scores)"),
    ]
    preprocess: PreprocessInfo
    tokenizer: TokenizerInfo
    text_trimmed: Annotated[
        bool,
        msgspec.Meta(
            description="text batches run only up to their longest text (exact only for causal "
            "text towers with EOT pooling, as CLIP's)"
        ),
    ]
    device: str
    dtype: Annotated[
        Literal["fp32", "fp16", "bf16"], msgspec.Meta(description="what the model computes in")
    ]
    dtype_reason: Annotated[
        str,
        msgspec.Meta(
            description="why: --dtype as given, or what auto saw (the CPU's bf16 units, the "
            "bf16 self-check's cosine and ranking against fp32)"
        ),
    ]
    compiled: str
    space: SpaceInfo
    batching: BatchingInfo
    default: bool = False


class ModelsResponse(Base):
    models: list[ModelInfo]
    cache: CacheInfo | None = None
    available: list[str] | None = None


class ClassifyRequest(Base):
    """Zero-shot classification of images against labels."""

    images: Annotated[list[Item], msgspec.Meta(examples=[[{"img_blob": EXAMPLE_PNG}]])]
    labels: Annotated[
        list[PromptPart],
        msgspec.Meta(
            description="each in every template; the prompts must fit --max-text-chars each "
            "and 16 KiB x --max-items in all (413 above)",
            examples=[["a red square", "a blue circle", "a cat"]],
        ),
    ]
    templates: Annotated[
        list[PromptPart] | None,
        msgspec.Meta(
            description="prompt templates, `{}` where the label goes; default: open_clip's "
            'ImageNet ensemble (80 templates); `["{}"]` for the plain labels',
            examples=[["a photo of {}.", "a drawing of {}."]],
        ),
    ] = None
    model: ModelName | None = None


class LabelScore(Base):
    label: str
    probability: Annotated[
        float,
        msgspec.Meta(
            description="the model's own score (see `objective`): softmax over the labels, or "
            "sigmoid(logit_scale x cosine + logit_bias) for this label alone"
        ),
    ]


class ClassifyResponse(Base):
    """Per image, every label with its probability, most likely first."""

    predictions: list[list[LabelScore]]
    objective: Annotated[
        Literal["softmax", "sigmoid"],
        msgspec.Meta(description="softmax: a row sums to 1; sigmoid: each label on its own"),
    ]


class CacheInfo(Base):
    """The embedding cache shared by every route and model."""

    max_mb: float
    enabled: bool
    entries: int
    used_bytes: int


# -- OpenAI's embeddings API (/v1/...): their field names and shapes -----------------------

TokenIds = list[int]


class EmbeddingsRequest(Base):
    """OpenAI's embeddings request. `input`: a string, a list of strings, one list of token
    ids, or a list of them; a `data:image/...;base64,` string is an image."""

    input: Annotated[
        str | list[str | int | TokenIds],
        msgspec.Meta(
            examples=[
                "a photo of a cat",
                ["a cat", f"data:image/png;base64,{EXAMPLE_PNG}"],
                [[320, 1929], [49406]],
            ]
        ),
    ]
    model: ModelName | None = None
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: Annotated[int, msgspec.Meta(gt=0)] | None = None
    user: Annotated[str, msgspec.Meta(max_length=1024)] | None = None
    # clipserve's extension (OpenAI has none): `encoding_format` still picks numbers or base64
    embedding_type: EmbeddingType = "float"


class EmbeddingData(Base):
    embedding: Annotated[
        list[float] | str,
        msgspec.Meta(
            description="numbers, or base64 of the little-endian bytes of the embedding_type "
            "asked for (float32 by default, as OpenAI's)"
        ),
    ]
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


class RawEmbeddingData(Base):
    """EmbeddingData in a msgpack response: the embedding as a bin of its raw bytes."""

    embedding: bytes
    index: int
    object: str = "embedding"


class RawEmbeddingsResponse(msgspec.Struct):
    """EmbeddingsResponse in msgpack (Accept: application/msgpack): the same object, each
    embedding the little-endian bytes that base64 would carry (a separate Struct because msgspec
    types cannot hold str and bytes in one union)."""

    data: list[RawEmbeddingData]
    model: str
    usage: Usage
    object: str = "list"


class OpenAIModel(msgspec.Struct):
    id: str
    created: int
    # an extension (OpenAI's SDK keeps unknown fields): the embedding-space digest, as
    # X-Clip-Space and /models' space.digest, for a client that lists models to check it
    space: str
    owned_by: str = "clipserve"
    object: str = "model"


class OpenAIModels(msgspec.Struct):
    data: list[OpenAIModel]
    object: str = "list"


class OpenAIError(msgspec.Struct):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIErrorBody(msgspec.Struct):
    """The error shape OpenAI's clients parse (their exceptions carry `message`)."""

    error: OpenAIError


class CohereErrorBody(msgspec.Struct):
    """The error shape Cohere's API answers in (its SDKs' exceptions carry the body)."""

    message: str


class Health(Base):
    status: str
    detail: str | None = None


class ErrorBody(msgspec.Struct):
    """Every error: the HTTP status and a message naming the field and the problem."""

    status_code: int
    detail: str
