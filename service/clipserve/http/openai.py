"""OpenAI's embeddings API over clipserve: its inputs, its encodings and its error shape.

Clients built on OpenAI's SDKs ask for base64 unless told otherwise, send token arrays, and
read errors from `{"error": {"message", "type", "param", "code"}}`; /v1/* speak exactly that.
Images come through the same route as NVIDIA's NV-CLIP takes them: an input string that is a
`data:image/...;base64,` URI.
"""

from __future__ import annotations

import re

import numpy as np
import pybase64
import torch
from litestar import Request, Response
from litestar.types import ExceptionHandlersMap

from clipserve.engine.engine import Engine
from clipserve.engine.inputs import Tokens
from clipserve.errors import InvalidInput, PayloadTooLarge, UnknownModel, http_error
from clipserve.schemas import (
    EmbeddingData,
    EmbeddingsRequest,
    EmbeddingsResponse,
    Item,
    OpenAIError,
    OpenAIErrorBody,
    OpenAIModel,
    OpenAIModels,
    Usage,
)

OPENAI_PREFIX = "/v1/"  # the routes that answer in OpenAI's shapes
IMAGE_URI = "data:image/"
# Token ids per input, as OpenAI's own embeddings models take at most (CLIP reads 77 of them).
MAX_TOKEN_IDS = 8192
# A clipserve message starts with the field it is about: "input[2]: ...", "model: ...".
_FIELD = re.compile(r"^([A-Za-z_][\w.\[\]]*): ")
_JSON_PATH = re.compile(r"at `\$\.([\w.\[\]]+)`")


async def embeddings(engine: Engine, request: EmbeddingsRequest) -> EmbeddingsResponse:
    """/v1/embeddings: L2-normalized like OpenAI's, as floats or base64."""
    out = await engine.encode(
        inputs(request.input), model=request.model, normalize=True, where="input"
    )
    check_dimensions(request.dimensions, out.model, out.vectors.shape[1])
    return EmbeddingsResponse(
        data=embedding_data(out.vectors, request.encoding_format),
        model=out.model,
        usage=Usage(prompt_tokens=out.tokens, total_tokens=out.tokens),
    )


def models(engine: Engine) -> OpenAIModels:
    """/v1/models: every served model, as OpenAI lists its own."""
    return OpenAIModels(
        data=[OpenAIModel(id=spec, created=t) for spec, t in engine.loaded_at.items()]
    )


def model(engine: Engine, name: str) -> OpenAIModel:
    """/v1/models/{name}: the exact id, as OpenAI's retrieve takes it."""
    if name not in engine.loaded_at:
        engine.served(name)  # 503 while loading
        raise UnknownModel(f"model: {name!r} is not served here (see /v1/models)")
    return OpenAIModel(id=name, created=engine.loaded_at[name])


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


def check_dimensions(dimensions: int | None, model: str, embed_dim: int) -> None:
    """Only the model's own size: CLIP was not trained for truncated (Matryoshka) vectors."""
    if dimensions is not None and dimensions != embed_dim:
        raise InvalidInput(
            f"dimensions: {dimensions} is not available; {model} makes {embed_dim}-dimensional "
            "embeddings and CLIP models are not trained to be truncated, so only "
            f"{embed_dim} (or leaving dimensions out) is accepted"
        )


def embedding_data(vectors: torch.Tensor, encoding_format: str) -> list[EmbeddingData]:
    """One entry per row: a list of floats, or base64 of little-endian float32 as OpenAI's."""
    if encoding_format == "base64":
        rows = np.ascontiguousarray(vectors.numpy(), dtype="<f4")
        encoded = [pybase64.b64encode(row.tobytes()).decode("ascii") for row in rows]
        return [EmbeddingData(embedding=e, index=i) for i, e in enumerate(encoded)]
    return [EmbeddingData(embedding=v, index=i) for i, v in enumerate(vectors.tolist())]


def error_body(status: int, message: str) -> OpenAIErrorBody:
    """OpenAI's error shape for a clipserve error; `param` is the field the message names."""
    field = _FIELD.match(message) or _JSON_PATH.search(message)
    param = field.group(1) if field else None
    code = None
    if status == 401:
        code = "invalid_api_key"
    elif status == 404 and param == "model":
        code = "model_not_found"
    kind = "invalid_request_error" if status < 500 else "server_error"
    return OpenAIErrorBody(OpenAIError(message=message, type=kind, param=param, code=code))


def error_response(request: Request, exc: Exception) -> Response:
    """What every error on /v1/* looks like: the same status and message, OpenAI's shape."""
    status, detail, headers = http_error(request, exc)
    return Response(error_body(status, detail), status_code=status, headers=headers)


EXCEPTION_HANDLERS: ExceptionHandlersMap = {Exception: error_response}
