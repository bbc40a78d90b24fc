"""OpenAI's embeddings API over clipserve: its inputs and its encodings.

Clients built on OpenAI's SDKs ask for base64 unless told otherwise, send token arrays, and
read errors from `{"error": {"message", "type", "param", "code"}}`; /v1/* speak exactly that
(the error shape: errors.error_body, chosen by the path).
Images come through the same route as NVIDIA's NV-CLIP takes them: an input string that is a
`data:image/...;base64,` URI.
"""

from __future__ import annotations

from litestar import Response

from clipserve.engine import embedding_types
from clipserve.engine.engine import Engine
from clipserve.engine.inputs import Tokens
from clipserve.errors import InvalidInput, PayloadTooLarge, UnknownModel
from clipserve.http import media
from clipserve.schemas import (
    EmbeddingData,
    EmbeddingsRequest,
    EmbeddingsResponse,
    Item,
    OpenAIModel,
    OpenAIModels,
    RawEmbeddingData,
    RawEmbeddingsResponse,
    Usage,
)

IMAGE_URI = "data:image/"
# Token ids per input, as OpenAI's own embeddings models take at most (CLIP reads 77 of them).
MAX_TOKEN_IDS = 8192


async def embeddings(engine: Engine, request: EmbeddingsRequest, media_type: str) -> Response:
    """/v1/embeddings: L2-normalized like OpenAI's, of the type asked, in `media_type` (JSON:
    numbers or base64 by encoding_format; see http/media.py for the others)."""
    out = await engine.encode(
        inputs(request.input), model=request.model, normalize=True, where="input"
    )
    check_dimensions(request.dimensions, out.model, out.vectors.shape[1])
    rows = embedding_types.convert(out.vectors.numpy(), request.embedding_type, "embedding_type")
    usage = Usage(prompt_tokens=out.tokens, total_tokens=out.tokens)
    space = engine.space(out.model)
    headers = media.embedding_headers(out.model, space, request.embedding_type, rows) | {
        media.PROMPT_TOKENS_HEADER: str(usage.prompt_tokens),
        media.TOTAL_TOKENS_HEADER: str(usage.total_tokens),
    }

    if media_type == media.JSON:
        base64 = request.encoding_format == "base64"
        rows_out = embedding_types.serialized(rows, base64=base64)
        data = [EmbeddingData(embedding=e, index=i) for i, e in enumerate(rows_out)]
        return Response(EmbeddingsResponse(data, out.model, usage), headers=headers)
    raw = [RawEmbeddingData(embedding=e, index=i) for i, e in enumerate(media.raw_rows(rows))]
    return media.binary_response(
        media_type, rows, RawEmbeddingsResponse(raw, out.model, usage), headers
    )


def models(engine: Engine) -> OpenAIModels:
    """/v1/models: every served model, as OpenAI lists its own."""
    return OpenAIModels(
        data=[
            OpenAIModel(id=spec, created=t, space=engine.space(spec))
            for spec, t in engine.loaded_at.items()
        ]
    )


def model(engine: Engine, name: str) -> OpenAIModel:
    """/v1/models/{name}: the exact id, as OpenAI's retrieve takes it."""
    if name not in engine.loaded_at:
        engine.served(name)  # 503 while loading
        raise UnknownModel(f"model: {name!r} is not served here (see /v1/models)")
    return OpenAIModel(id=name, created=engine.loaded_at[name], space=engine.space(name))


def inputs(raw: str | list[str | int | list[int]]) -> list[Item | Tokens]:
    """`input` as items: strings are texts or (data:image/ URIs) images, ints token ids."""
    if isinstance(raw, str):
        raw = [raw]
    if not raw:
        raise InvalidInput("input: is empty; give a string, a list of them, or token ids")
    if all(isinstance(x, int) for x in raw):
        return [_tokens(raw, "input")]  # type: ignore[arg-type]  # one token array
    out: list[Item | Tokens] = []
    for i, x in enumerate(raw):
        if isinstance(x, str):
            out.append(Item(img_uri=x) if x.startswith(IMAGE_URI) else Item(text=x))
        elif isinstance(x, list):
            out.append(_tokens(x, f"input[{i}]"))
        else:
            raise InvalidInput(
                f"input[{i}]: a token id among strings or token lists; send strings, one list "
                "of token ids, or a list of token-id lists"
            )
    return out


def _tokens(ids: list[int], where: str) -> Tokens:
    if len(ids) > MAX_TOKEN_IDS:
        raise PayloadTooLarge(f"{where}: {len(ids)} token ids; the limit is {MAX_TOKEN_IDS}")
    return Tokens(tuple(ids))


def check_dimensions(
    dimensions: int | None, model: str, embed_dim: int, where: str = "dimensions"
) -> None:
    """Only the model's own size: CLIP was not trained for truncated (Matryoshka) vectors.
    (Cohere's `output_dimension` takes the same answer.)"""
    if dimensions is not None and dimensions != embed_dim:
        raise InvalidInput(
            f"{where}: {dimensions} is not available; {model} makes {embed_dim}-dimensional "
            "embeddings and CLIP models are not trained to be truncated, so only "
            f"{embed_dim} (or leaving {where} out) is accepted"
        )
