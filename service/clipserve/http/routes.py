"""Route handlers: a validated Struct in, one call, a response Struct out.

Their dependencies (the Engine, Lifecycle and Metrics of the app) come from litestar's
dependency injection, wired in app.py; errors become HTTP responses in http/exceptions.py.
"""

from __future__ import annotations

from typing import Any

from litestar import Request, Response, Router, get, post
from litestar.di import NamedDependency
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromPath, FromQuery, JSONBody
from litestar.types import ControllerRouterHandler

from clipserve.engine import embedding_types
from clipserve.engine.engine import Engine
from clipserve.errors import COHERE_PREFIX, OPENAI_PREFIX
from clipserve.http import cohere as cohere_compat
from clipserve.http import media
from clipserve.http import openai as openai_compat
from clipserve.http.cohere_schemas import EmbedRequest as CohereEmbedRequest
from clipserve.http.cohere_schemas import EmbedResponse as CohereEmbedResponse
from clipserve.http.cohere_schemas import RerankRequest as CohereRerankRequest
from clipserve.http.cohere_schemas import RerankResponse as CohereRerankResponse
from clipserve.http.lifecycle import Lifecycle
from clipserve.http.middleware import MODEL_HEADER, SPACE_HEADER
from clipserve.metrics import Metrics
from clipserve.schemas import (
    ClassifyRequest,
    ClassifyResponse,
    CohereErrorBody,
    Embeddings,
    EmbeddingsRequest,
    EmbeddingsResponse,
    EncodeOptions,
    EncodeRequest,
    ErrorBody,
    Health,
    ModelsResponse,
    OpenAIErrorBody,
    OpenAIModel,
    OpenAIModels,
    RankRequest,
    RankResponse,
)


def _errors(*codes: int) -> dict[int, ResponseSpec]:
    """OpenAPI docs for the error statuses a route can answer (all share ErrorBody)."""
    meaning = {
        400: "invalid input (the detail names the field)",
        401: "missing or bad API key",
        404: "unknown model",
        406: "Accept admits none of the media types the route answers in",
        413: "over a size or count limit",
        500: "the model failed on an item",
        502: "an image URL could not be fetched",
        503: "queue full or shutting down (see Retry-After)",
        504: "an image URL timed out",
    }
    return {c: ResponseSpec(ErrorBody, description=meaning[c]) for c in codes}


WORK_ERRORS = _errors(400, 401, 404, 413, 500, 502, 503, 504)
# /encode answers in JSON, .npy or msgpack, by Accept
ENCODE_ERRORS = _errors(400, 401, 404, 406, 413, 500, 502, 503, 504)


def _openai_errors(*codes: int) -> dict[int, ResponseSpec]:
    """The same statuses in OpenAI's error shape, for the /v1/* routes."""
    return {
        c: ResponseSpec(OpenAIErrorBody, description=spec.description)
        for c, spec in _errors(*codes).items()
    }


def _cohere_errors(*codes: int) -> dict[int, ResponseSpec]:
    """The same statuses in Cohere's error shape, for the /v2/* routes."""
    return {
        c: ResponseSpec(CohereErrorBody, description=spec.description)
        for c, spec in _errors(*codes).items()
    }


def _from(engine: Engine, model: str, content: object) -> Response:
    """A response that names the model which produced it and that model's embedding space."""
    return Response(content, headers={MODEL_HEADER: model, SPACE_HEADER: engine.space(model)})


@post(
    "/encode",
    status_code=200,
    summary="Embed texts and images",
    responses=ENCODE_ERRORS,
    operation_class=media.EmbeddingsOperation,
)
async def encode(
    data: JSONBody[EncodeRequest], engine: NamedDependency[Engine], request: Request
) -> Response[Embeddings]:
    """A JSON array of items, or `{"items": [...], "model", "normalize", "embedding_type",
    "encoding"}`: vectors as float32 numbers, or another type, as numbers or base64; with
    `Accept: application/x-npy` or msgpack, one array or msgpack bins instead."""
    media_type = media.negotiate(request.headers.get("accept"))  # a 406 before any work
    opts = data if isinstance(data, EncodeOptions) else EncodeOptions(items=data)
    normalize = embedding_types.normalize_for(opts.embedding_type, opts.normalize)
    out = await engine.encode(opts.items, model=opts.model, normalize=normalize, where="items")
    rows = embedding_types.convert(out.vectors.numpy(), opts.embedding_type, "embedding_type")
    space = engine.space(out.model)
    headers = media.embedding_headers(out.model, space, opts.embedding_type, rows)
    if media_type == media.JSON:
        base64 = opts.encoding == "base64"
        return Response[Any](embedding_types.serialized(rows, base64=base64), headers=headers)
    # the JSON's own object, a list of rows, with each row a bin
    return media.binary_response(media_type, rows, media.raw_rows(rows), headers)


@post("/rank", status_code=200, summary="Score candidates against queries", responses=WORK_ERRORS)
async def rank(
    data: JSONBody[RankRequest], engine: NamedDependency[Engine]
) -> Response[RankResponse]:
    """Per query row: cosines, softmax probabilities over the candidates, and the model's own
    scores (sigmoid per pair for SigLIP-style models; see `objective`)."""
    out = await engine.rank(data.queries, data.candidates, model=data.model)
    return _from(
        engine,
        out.model,
        RankResponse(
            probabilities=out.probabilities.tolist(),
            cosine_similarities=out.cosine.tolist(),
            scores=out.scores.tolist(),
            objective=out.objective,  # type: ignore[arg-type]
        ),
    )


@post("/classify", status_code=200, summary="Zero-shot classification", responses=WORK_ERRORS)
async def classify(
    data: JSONBody[ClassifyRequest], engine: NamedDependency[Engine]
) -> Response[ClassifyResponse]:
    """Each image against every label's prompt ensemble, scored by the model's own objective
    (softmax over the labels for CLIP, sigmoid per label for SigLIP), most likely first."""
    out = await engine.classify(data.images, data.labels, data.templates, model=data.model)
    return _from(
        engine,
        out.model,
        ClassifyResponse(predictions=out.predictions, objective=out.objective),  # type: ignore[arg-type]
    )


@post(
    "/embeddings",
    status_code=200,
    summary="OpenAI-compatible embeddings (texts, token ids, data:image/ URIs)",
    responses=_openai_errors(400, 401, 404, 406, 413, 500, 503),
    operation_class=media.EmbeddingsOperation,
)
async def openai_embeddings(
    data: JSONBody[EmbeddingsRequest], engine: NamedDependency[Engine], request: Request
) -> Response[EmbeddingsResponse]:
    """OpenAI's embeddings API: `encoding_format` float or base64, `dimensions` (the model's
    own only), token arrays, and `data:image/...;base64,` strings as images; L2-normalized.
    `Accept: application/x-npy` or msgpack answers one array or msgpack bins instead."""
    media_type = media.negotiate(request.headers.get("accept"))  # a 406 before any work
    return await openai_compat.embeddings(engine, data, media_type)


@get(
    "/models",
    summary="The served models, in OpenAI's shape",
    responses=_openai_errors(401, 503),
)
async def openai_models(engine: NamedDependency[Engine]) -> OpenAIModels:
    """What OpenAI clients' `models.list()` reads."""
    return openai_compat.models(engine)


@get(
    "/models/{name:path}",
    summary="One served model, in OpenAI's shape",
    responses=_openai_errors(401, 404, 503),
)
async def openai_model(name: FromPath[str], engine: NamedDependency[Engine]) -> OpenAIModel:
    """What OpenAI clients' `models.retrieve(id)` reads; ids may hold slashes (hf-hub:...)."""
    return openai_compat.model(engine, name.removeprefix("/"))


@get(
    "/models",
    summary="Loaded models (and, with ?available=true, every downloadable spec)",
    responses=_errors(400, 401),
)
async def models(
    engine: NamedDependency[Engine], available: FromQuery[bool] = False
) -> ModelsResponse:
    """What is served, how it is batched, and optionally what could be."""
    return engine.describe(available=available)


@get(
    "/healthz",
    summary="Liveness: the process and its compute threads are alive, its devices work",
    responses={503: ResponseSpec(Health, description="a compute thread died or a device failed")},
)
async def healthz(engine: NamedDependency[Engine]) -> Response[Health]:
    """503 once a compute thread has died or a model's device keeps failing (see
    --device-failures), so Kubernetes restarts the pod."""
    if why := engine.failure:
        return Response(Health("dead", why), status_code=503)
    return Response(Health("ok"))


@get(
    "/readyz",
    summary="Readiness: models loaded and warm, not draining",
    responses={503: ResponseSpec(Health, description="loading, draining or dead")},
)
async def readyz(
    engine: NamedDependency[Engine], lifecycle: NamedDependency[Lifecycle]
) -> Response[Health]:
    """503 while loading, once a model is out of service (as /healthz), and from the start
    of shutdown."""
    if reason := lifecycle.not_ready_reason(engine):
        return Response(
            Health("unavailable", reason), status_code=503, headers={"Retry-After": "1"}
        )
    return Response(Health("ready"))


@get("/metrics", summary="Prometheus metrics", media_type="text/plain; version=0.0.4")
async def prometheus(
    engine: NamedDependency[Engine],
    lifecycle: NamedDependency[Lifecycle],
    metrics: NamedDependency[Metrics],
) -> bytes:
    """The exposition format; readiness and GPU memory are sampled at scrape time."""
    return metrics.render(
        ready=lifecycle.not_ready_reason(engine) is None, gpu_memory=engine.gpu_memory()
    )


@post(
    "/embed",
    status_code=200,
    summary="Cohere-compatible embed (texts, data:image/ URIs, mixed inputs)",
    responses=_cohere_errors(400, 401, 404, 413, 500, 503),
)
async def cohere_embed(
    data: JSONBody[CohereEmbedRequest], engine: NamedDependency[Engine]
) -> Response[CohereEmbedResponse]:
    """Cohere's v2 embed: `texts`, `images` or `inputs`, several `embedding_types` at once,
    `truncate`; L2-normalized (see the README, "Cohere clients")."""
    return _from(engine, *await cohere_compat.embed(engine, data))


@post(
    "/rerank",
    status_code=200,
    summary="Cohere-compatible rerank (text or data:image/ URI documents)",
    responses=_cohere_errors(400, 401, 404, 413, 500, 503),
)
async def cohere_rerank(
    data: JSONBody[CohereRerankRequest], engine: NamedDependency[Engine]
) -> Response[CohereRerankResponse]:
    """Cohere's v2 rerank: each document's `relevance_score` is the model's own score for the
    query (as /rank's `scores`), best first, `top_n` of them."""
    return _from(engine, *await cohere_compat.rerank(engine, data))


# OpenAI's surface, under the prefix by which every error below it takes OpenAI's shape.
OPENAI = Router(
    path=OPENAI_PREFIX.rstrip("/"),
    route_handlers=[openai_embeddings, openai_models, openai_model],
)

# Cohere's, likewise.
COHERE = Router(path=COHERE_PREFIX.rstrip("/"), route_handlers=[cohere_embed, cohere_rerank])

ROUTES: list[ControllerRouterHandler] = [
    encode,
    rank,
    classify,
    OPENAI,
    COHERE,
    models,
    healthz,
    readyz,
    prometheus,
]
