"""Cohere's v2 embed and rerank bodies, field for field as its SDKs send and parse them.

Requests refuse unknown fields, as every clipserve body does; responses carry only what the SDK's
models read (`cohere.EmbedByTypeResponse`, `cohere.V2RerankResponse`). The error shape,
`{"message"}`, is schemas.CohereErrorBody (errors.error_body picks it by the /v2/ prefix).
"""

from __future__ import annotations

from typing import Annotated, Literal

import msgspec

from clipserve.schemas import EXAMPLE_PNG, Base, ModelName

DATA_URI_EXAMPLE = f"data:image/png;base64,{EXAMPLE_PNG}"
# Cohere's types; base64 is theirs too: base64 of the little-endian float32 bytes.
EMBEDDING_TYPES = ("float", "int8", "uint8", "binary", "ubinary", "base64")
InputType = Literal["search_document", "search_query", "classification", "clustering", "image"]
Count = Annotated[int, msgspec.Meta(ge=1)]
# A scheduling hint on Cohere's side; clipserve's batcher serves in arrival order.
Priority = Annotated[int, msgspec.Meta(ge=0, description="accepted; served in arrival order")]


class ImageUrl(Base):
    url: Annotated[str, msgspec.Meta(description="a data:image/...;base64, URI")]


class TextContent(Base, tag="text", tag_field="type"):
    text: str


class ImageUrlContent(Base, tag="image_url", tag_field="type"):
    image_url: ImageUrl


class EmbedInput(Base):
    """One embedding from one or more parts (texts and images)."""

    content: Annotated[list[TextContent | ImageUrlContent], msgspec.Meta(min_length=1)]


class EmbedRequest(Base):
    """Cohere's /v2/embed: exactly one of `texts`, `images` (data URIs), `inputs`."""

    model: ModelName
    input_type: (
        Annotated[
            InputType,
            msgspec.Meta(description="accepted; CLIP embeds a text the same for every input_type"),
        ]
        | None
    ) = None
    texts: Annotated[list[str], msgspec.Meta(examples=[["a photo of a cat"]])] | None = None
    images: Annotated[list[str], msgspec.Meta(examples=[[DATA_URI_EXAMPLE]])] | None = None
    inputs: list[EmbedInput] | None = None
    max_tokens: Count | None = None
    output_dimension: Count | None = None
    # strings, checked in cohere.py: an unknown type is refused with the list of known ones
    embedding_types: (
        Annotated[
            list[Annotated[str, msgspec.Meta(max_length=64)]],
            msgspec.Meta(min_length=1, description=f"any of {', '.join(EMBEDDING_TYPES)}"),
        ]
        | None
    ) = None
    truncate: Literal["NONE", "START", "END"] = "END"
    priority: Priority | None = None


Rows = list[list[float]]  # ints for the integer types (a float to the type checker)


class EmbeddingsByType(msgspec.Struct, omit_defaults=True):
    float_: Rows | None = msgspec.field(default=None, name="float")
    int8: Rows | None = None
    uint8: Rows | None = None
    binary: Rows | None = None
    ubinary: Rows | None = None
    base64: list[str] | None = None


class ApiVersion(msgspec.Struct):
    version: str = "2"


class BilledUnits(msgspec.Struct, omit_defaults=True):
    input_tokens: int = 0
    images: int = 0


class Meta(msgspec.Struct):
    billed_units: BilledUnits
    api_version: ApiVersion = msgspec.field(default_factory=ApiVersion)


class EmbedResponse(msgspec.Struct):
    id: str
    embeddings: EmbeddingsByType
    meta: Meta
    texts: list[str] | None = None
    response_type: str = "embeddings_by_type"


class RerankRequest(Base):
    """Cohere's /v2/rerank: each document (a text, or a data:image/ URI) against the query."""

    model: ModelName
    query: Annotated[str, msgspec.Meta(examples=["a photo of a cat"])]
    documents: Annotated[list[str], msgspec.Meta(examples=[["a cat", DATA_URI_EXAMPLE]])]
    top_n: Count | None = None
    max_tokens_per_doc: Count | None = None
    return_documents: bool = False
    priority: Priority | None = None


class RerankDocument(msgspec.Struct):
    text: str


class RerankResult(msgspec.Struct, omit_defaults=True):
    index: int
    relevance_score: float
    document: RerankDocument | None = None


class RerankResponse(msgspec.Struct):
    id: str
    results: list[RerankResult]
    meta: Meta
