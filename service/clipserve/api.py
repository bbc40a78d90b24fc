"""Route handlers: a validated Struct in, one Embedder call, a response Struct out."""

from __future__ import annotations

import msgspec
import torch
from litestar import Request, Response, get, post
from litestar.datastructures import State
from litestar.exceptions import HTTPException, ValidationException
from litestar.openapi.datastructures import ResponseSpec
from litestar.params import FromQuery, JSONBody
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR

from clipserve.embedder import Embedder
from clipserve.errors import ClipServeError
from clipserve.lifecycle import Lifecycle
from clipserve.middleware import MODEL_HEADER
from clipserve.models import ClipModel, available_specs, normalize
from clipserve.schemas import (
    BatchingInfo,
    EmbeddingData,
    Embeddings,
    EmbeddingsRequest,
    EmbeddingsResponse,
    EncodeOptions,
    EncodeRequest,
    ErrorBody,
    Health,
    Item,
    ModelInfo,
    ModelsResponse,
    RankRequest,
    RankResponse,
    Usage,
)


def _errors(*codes: int) -> dict[int, ResponseSpec]:
    """OpenAPI docs for the error statuses a route can answer (all share ErrorBody)."""
    meaning = {
        400: "invalid input (the detail names the field)",
        401: "missing or bad API key",
        404: "unknown model",
        413: "over a size or count limit",
        500: "the model failed on an item",
        502: "an image URL could not be fetched",
        503: "queue full or shutting down (see Retry-After)",
        504: "an image URL timed out",
    }
    return {c: ResponseSpec(ErrorBody, description=meaning[c]) for c in codes}


WORK_ERRORS = _errors(400, 401, 404, 413, 500, 502, 503, 504)


def _embedder(state: State) -> Embedder:
    return state.embedder


def _with_model(content: object, model: ClipModel) -> Response:
    return Response(content, headers={MODEL_HEADER: model.spec.raw})


@post("/encode", status_code=200, summary="Embed texts and images", responses=WORK_ERRORS)
async def encode(data: JSONBody[EncodeRequest], state: State) -> Response[Embeddings]:
    """A JSON array of items (or `{"items": [...], "model": ..., "normalize": ...}`)."""
    opts = data if isinstance(data, EncodeOptions) else EncodeOptions(items=data)
    emb = _embedder(state)
    emb.check_count(len(opts.items), "items")
    model = emb.model(opts.model)
    vectors = await emb.embed(model, opts.items, "items")
    if opts.normalize:
        vectors = normalize(vectors)
    return _with_model(vectors.tolist(), model)


@post("/rank", status_code=200, summary="Score candidates against queries", responses=WORK_ERRORS)
async def rank(data: JSONBody[RankRequest], state: State) -> Response[RankResponse]:
    """Softmax over candidates of exp(logit_scale) x cosine, one row per query."""
    emb = _embedder(state)
    emb.check_count(len(data.queries), "queries")
    emb.check_count(len(data.candidates), "candidates")
    emb.check_count(len(data.queries) + len(data.candidates), "queries+candidates")
    model = emb.model(data.model)
    probs, cosine = await emb.rank(model, data.queries, data.candidates)
    return _with_model(
        RankResponse(probabilities=probs.tolist(), cosine_similarities=cosine.tolist()), model
    )


@post(
    "/v1/embeddings",
    status_code=200,
    summary="OpenAI-compatible text embeddings",
    responses=WORK_ERRORS,
)
async def openai_embeddings(
    data: JSONBody[EmbeddingsRequest], state: State
) -> Response[EmbeddingsResponse]:
    """`input` is a string or a list of strings; embeddings are L2-normalized like OpenAI's."""
    emb = _embedder(state)
    texts = [data.input] if isinstance(data.input, str) else data.input
    emb.check_count(len(texts), "input")
    model = emb.model(data.model)
    vectors = normalize(await emb.embed(model, [Item(text=t) for t in texts], "input"))
    tokens = emb.token_count(model, texts)
    return _with_model(
        EmbeddingsResponse(
            data=[EmbeddingData(embedding=v, index=i) for i, v in enumerate(vectors.tolist())],
            model=model.spec.raw,
            usage=Usage(prompt_tokens=tokens, total_tokens=tokens),
        ),
        model,
    )


@get(
    "/models",
    summary="Loaded models (and, with ?available=true, every downloadable spec)",
    responses=_errors(400, 401),
)
async def models(state: State, available: FromQuery[bool] = False) -> ModelsResponse:
    """What is served, how it is batched, and optionally what could be."""
    emb = _embedder(state)
    infos = []
    for name, model in emb.models.items():
        b = emb.batchers[name]
        infos.append(
            ModelInfo(
                **model.info(),
                default=name == emb.default_model,
                batching=BatchingInfo(
                    max_batch_size=b.max_batch_size,
                    max_wait_ms=b.max_wait_s * 1000,
                    max_queue=b.max_queue,
                    compute_workers=b.workers,
                    compute_threads=b.threads,
                ),
            )
        )
    return ModelsResponse(models=infos, available=available_specs() if available else None)


@get(
    "/healthz",
    summary="Liveness: the process and its compute threads are alive",
    responses={503: ResponseSpec(Health, description="a compute thread died")},
)
async def healthz(state: State) -> Response[Health]:
    """503 once a compute thread has died, so Kubernetes restarts the pod."""
    if not _embedder(state).healthy:
        return Response(Health("dead", "a compute thread died"), status_code=503)
    return Response(Health("ok"))


@get(
    "/readyz",
    summary="Readiness: models loaded and warm, not draining",
    responses={503: ResponseSpec(Health, description="loading, draining or dead")},
)
async def readyz(state: State) -> Response[Health]:
    """503 while loading, after a compute thread died, and from the start of shutdown."""
    lifecycle: Lifecycle = state.lifecycle
    reason = lifecycle.not_ready_reason(_embedder(state))
    state.metrics.ready.set(0 if reason else 1)
    if reason:
        return Response(
            Health("unavailable", reason), status_code=503, headers={"Retry-After": "1"}
        )
    return Response(Health("ready"))


@get("/metrics", summary="Prometheus metrics", media_type="text/plain; version=0.0.4")
async def metrics(state: State) -> bytes:
    """The exposition format, with GPU memory sampled at scrape time."""
    for model in _embedder(state).models.values():
        if model.device.type == "cuda":
            state.metrics.gpu_memory.labels(str(model.device)).set(
                torch.cuda.memory_allocated(model.device)
            )
    return state.metrics.render()


ROUTES = [encode, rank, openai_embeddings, models, healthz, readyz, metrics]


def error_response(status: int, detail: str, headers: dict[str, str] | None = None) -> Response:
    """The one error shape: {"status_code", "detail"}."""
    return Response(
        ErrorBody(status_code=status, detail=detail), status_code=status, headers=headers
    )


def handle_clipserve_error(_: Request, exc: ClipServeError) -> Response:
    return error_response(exc.status_code, exc.message, exc.headers)


def handle_validation_error(_: Request, exc: ValidationException) -> Response:
    # msgspec's own message names the problem and the JSON path ("Expected `str | null`, got
    # `int` - at `$.data[0].text`"); litestar's summary can drop the path, so prefer the cause.
    cause = exc.__cause__
    if isinstance(cause, msgspec.ValidationError):
        detail = str(cause).replace("`$.data", "`$")
    else:
        extra = exc.extra if isinstance(exc.extra, list) else []
        detail = (
            "; ".join(str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in extra)
            or exc.detail
        )
    return error_response(400, f"invalid request body: {detail}")


def handle_http_error(_: Request, exc: HTTPException) -> Response:
    cause = exc.__cause__
    while cause is not None and not isinstance(cause, msgspec.DecodeError):
        cause = cause.__cause__
    if cause is not None:
        return error_response(400, f"request body is not valid JSON: {cause}")
    return error_response(exc.status_code, exc.detail, exc.headers)


def handle_internal_error(request: Request, exc: Exception) -> Response:
    request.logger.exception("unhandled error on %s", request.url.path)
    return error_response(HTTP_500_INTERNAL_SERVER_ERROR, "internal error")


EXCEPTION_HANDLERS = {
    ClipServeError: handle_clipserve_error,
    ValidationException: handle_validation_error,
    HTTPException: handle_http_error,
    Exception: handle_internal_error,
}
