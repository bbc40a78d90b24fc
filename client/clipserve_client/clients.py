"""`Client` and `AsyncClient`: the same calls, blocking or awaited, over what `_Core` shares."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import time
import warnings
from collections.abc import Sequence
from typing import Any, Literal

import httpx
import numpy as np

from clipserve_client.items import ImageSource, Item, as_item, image, images_of, text, texts_of
from clipserve_client.results import (
    EMBEDDING_DTYPES,
    NPY,
    APIError,
    ClientError,
    ModelChanged,
    Prediction,
    Ranking,
    RequestTimeout,
    detail_of,
    embeddings_of,
    predictions_of,
    ranking_of,
)

MODEL_HEADER = "X-Clip-Model"
SPACE_HEADER = "X-Clip-Space"  # the digest of the weights, preprocessing and tokenizer
JSON = "application/json"
# encode's arrays come as one .npy body: no JSON numbers to format or parse. A server that
# answers JSON all the same (one from before .npy responses) is read from its JSON.
ARRAYS = f"{NPY}, {JSON};q=0.5"
# float32 numbers, float16, int8/uint8 scaled from the normalized vector, or sign bits packed
# 8 per byte (see the README's "Embedding types")
EmbeddingType = Literal["float", "float16", "int8", "uint8", "binary", "ubinary"]


class _Core:
    """What both clients share: settings, request bodies, response checks, retry timing."""

    def __init__(
        self,
        base_url: str = "http://localhost:3000",
        *,
        api_key: str | None = None,
        model: str | None = None,
        expect_model: str | None = None,
        expect_space: str | None = None,
        timeout: float = 60.0,
        retries: int = 3,
        max_retry_wait_s: float = 10.0,
        on_model_change: Literal["raise", "warn"] = "raise",
        transport: Any = None,
    ) -> None:
        """`model` picks a served model for every call (default: the server's default);
        `expect_model` is the spec stored vectors came from, `expect_space` their space digest
        (`X-Clip-Space`, `clipserve embed`'s run.json "space"; both checked on the first call);
        `api_key` defaults to $CLIPSERVE_API_KEY; a 503 or a refused connection is retried
        `retries` times, waiting at most `max_retry_wait_s`; `transport` goes to httpx."""
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.retries = retries
        self.max_retry_wait_s = max_retry_wait_s
        self.on_model_change = on_model_change
        self._seen: dict[str | None, str] = {}
        self._spaces: dict[str | None, str] = {}
        if expect_model is not None:
            self._seen[model] = expect_model
        if expect_space is not None:
            self._spaces[model] = expect_space
        api_key = api_key if api_key is not None else os.environ.get("CLIPSERVE_API_KEY")
        headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self._http = self._open(
            base_url=self.base_url,
            headers=headers,
            timeout=httpx.Timeout(timeout, connect=min(timeout, 10.0)),
            transport=transport,
        )

    @staticmethod
    def _open(**kwargs: Any) -> Any:
        raise NotImplementedError

    def seen_model(self, model: str | None = None) -> str | None:
        """The spec that last answered for `model` (None: the default model), if any yet."""
        return self._seen.get(model if model is not None else self.model)

    def seen_space(self, model: str | None = None) -> str | None:
        """The space digest that last answered for `model` (None: the default model), if any."""
        return self._spaces.get(model if model is not None else self.model)

    def reset(self) -> None:
        """Forget which models and spaces answered (after re-embedding what was stored)."""
        self._seen.clear()
        self._spaces.clear()

    def _encode_body(
        self,
        texts: str | Sequence[str] | None,
        images: ImageSource | Sequence[ImageSource] | None,
        normalize: bool | None,
        model: str | None,
        embedding_type: str = "float",
    ) -> dict[str, Any]:
        items = [text(t) for t in texts_of(texts)] + [image(i) for i in images_of(images)]
        if not items:
            raise ValueError("give texts, images or both")
        if embedding_type not in EMBEDDING_DTYPES:
            raise ValueError(f"embedding_type: {embedding_type!r}; one of {list(EMBEDDING_DTYPES)}")
        body: dict[str, Any] = {"items": items, **self._model_field(model)}
        if normalize is not None:  # left out: the server's default (normalized for int8/uint8)
            body["normalize"] = normalize
        if embedding_type != "float":
            # base64 of the raw bytes: exact, and a quarter of the JSON numbers' size or less
            body |= {"embedding_type": embedding_type, "encoding": "base64"}
        return body

    def _rank_body(
        self, queries: Sequence[str | Item], candidates: Sequence[str | Item], model: str | None
    ) -> dict[str, Any]:
        return {
            "queries": [as_item(q) for q in queries],
            "candidates": [as_item(c) for c in candidates],
            **self._model_field(model),
        }

    def _classify_body(
        self,
        images: ImageSource | Sequence[ImageSource],
        labels: Sequence[str],
        templates: Sequence[str] | None,
        model: str | None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "images": [image(i) for i in images_of(images)],
            "labels": list(labels),
            **self._model_field(model),
        }
        if templates is not None:
            body["templates"] = list(templates)
        return body

    def _model_field(self, model: str | None) -> dict[str, str]:
        chosen = model if model is not None else self.model
        return {"model": chosen} if chosen is not None else {}

    def _checked(
        self, response: httpx.Response, model: str | None, *, track: bool
    ) -> httpx.Response:
        """A success, as it came; APIError otherwise; ModelChanged if the model or its space
        moved (the same spec with other weights is as incomparable as another model)."""
        if response.status_code >= 400:
            raise APIError(response.status_code, detail_of(response))
        if not track:
            return response
        key = model if model is not None else self.model
        served, space = response.headers.get(MODEL_HEADER), response.headers.get(SPACE_HEADER)
        previous, previous_space = self._seen.get(key), self._spaces.get(key)
        changed = None
        if served is not None and previous is not None and previous != served:
            changed = ModelChanged(key, previous, served)
        elif space is not None and previous_space is not None and previous_space != space:
            changed = ModelChanged(key, previous or str(served), str(served), previous_space, space)
        if changed is not None:
            if self.on_model_change == "raise":
                raise changed
            warnings.warn(str(changed), stacklevel=4)
        if served is not None:
            self._seen[key] = served
        if space is not None:  # a server from before X-Clip-Space: the spec alone is checked
            self._spaces[key] = space
        return response

    def _retry_delay(self, response: httpx.Response | None, attempt: int) -> float | None:
        """Seconds to wait before trying again, or None to stop: a 503 waits its Retry-After,
        a refused connection (None) backs off 0.5, 1, 2 ... seconds."""
        if attempt >= self.retries:
            return None
        if response is not None and response.status_code != 503:
            return None
        backoff = 0.5 * 2**attempt
        if response is not None:
            # an HTTP date (clipserve never sends one) keeps the backoff
            with contextlib.suppress(ValueError):
                backoff = float(response.headers.get("Retry-After", backoff))
        return min(max(backoff, 0.0), self.max_retry_wait_s)


class Client(_Core):
    """A blocking client (see _Core.__init__ for the settings)."""

    _http: httpx.Client

    @staticmethod
    def _open(**kwargs: Any) -> httpx.Client:
        return httpx.Client(**kwargs)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._http.close()

    def encode(
        self,
        texts: str | Sequence[str] | None = None,
        images: ImageSource | Sequence[ImageSource] | None = None,
        *,
        normalize: bool | None = None,
        model: str | None = None,
        embedding_type: EmbeddingType = "float",
    ) -> np.ndarray:
        """Embeddings [len(texts) + len(images), dim], texts' rows first, in order: float32,
        or `embedding_type`'s dtype (float16, int8, uint8; binary int8 and ubinary uint8 of
        dim / 8 packed sign bits). `normalize` defaults to no, but to yes for int8 and uint8."""
        body = self._encode_body(texts, images, normalize, model, embedding_type)
        response = self._request("POST", "/encode", body, model, ARRAYS)
        return embeddings_of(response, embedding_type)

    def rank(
        self,
        queries: Sequence[str | Item],
        candidates: Sequence[str | Item],
        *,
        model: str | None = None,
    ) -> Ranking:
        """Every candidate scored against every query; strings are texts, image(...) images."""
        return ranking_of(self._post("/rank", self._rank_body(queries, candidates, model), model))

    def classify(
        self,
        images: ImageSource | Sequence[ImageSource],
        labels: Sequence[str],
        *,
        templates: Sequence[str] | None = None,
        model: str | None = None,
    ) -> list[list[Prediction]]:
        """Per image, every label with its probability, most likely first."""
        body = self._classify_body(images, labels, templates, model)
        return predictions_of(self._post("/classify", body, model))

    def models(self) -> dict[str, Any]:
        """The server's /models."""
        return self._request("GET", "/models", None, None).json()

    def _post(self, path: str, body: dict[str, Any], model: str | None) -> Any:
        return self._request("POST", path, body, model).json()

    def _request(
        self, method: str, path: str, body: Any, model: str | None, accept: str = JSON
    ) -> httpx.Response:
        for attempt in itertools.count():
            try:
                response = self._http.request(method, path, json=body, headers={"Accept": accept})
            except httpx.TimeoutException as exc:
                raise RequestTimeout(f"{method} {path}: no answer in time ({exc})") from exc
            except httpx.ConnectError as exc:
                delay = self._retry_delay(None, attempt)
                if delay is None:
                    raise ClientError(f"{method} {path}: cannot connect ({exc})") from exc
            else:
                delay = self._retry_delay(response, attempt)
                if delay is None:
                    return self._checked(response, model, track=path != "/models")
            time.sleep(delay)
        raise AssertionError("unreachable")


class AsyncClient(_Core):
    """The asyncio twin of `Client`: the same methods, awaited."""

    _http: httpx.AsyncClient

    @staticmethod
    def _open(**kwargs: Any) -> httpx.AsyncClient:
        return httpx.AsyncClient(**kwargs)

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        await self._http.aclose()

    async def encode(
        self,
        texts: str | Sequence[str] | None = None,
        images: ImageSource | Sequence[ImageSource] | None = None,
        *,
        normalize: bool | None = None,
        model: str | None = None,
        embedding_type: EmbeddingType = "float",
    ) -> np.ndarray:
        """Embeddings [len(texts) + len(images), dim], texts' rows first, in order: float32,
        or `embedding_type`'s dtype (float16, int8, uint8; binary int8 and ubinary uint8 of
        dim / 8 packed sign bits). `normalize` defaults to no, but to yes for int8 and uint8."""
        body = self._encode_body(texts, images, normalize, model, embedding_type)
        response = await self._request("POST", "/encode", body, model, ARRAYS)
        return embeddings_of(response, embedding_type)

    async def rank(
        self,
        queries: Sequence[str | Item],
        candidates: Sequence[str | Item],
        *,
        model: str | None = None,
    ) -> Ranking:
        """Every candidate scored against every query; strings are texts, image(...) images."""
        body = self._rank_body(queries, candidates, model)
        return ranking_of(await self._post("/rank", body, model))

    async def classify(
        self,
        images: ImageSource | Sequence[ImageSource],
        labels: Sequence[str],
        *,
        templates: Sequence[str] | None = None,
        model: str | None = None,
    ) -> list[list[Prediction]]:
        """Per image, every label with its probability, most likely first."""
        body = self._classify_body(images, labels, templates, model)
        return predictions_of(await self._post("/classify", body, model))

    async def models(self) -> dict[str, Any]:
        """The server's /models."""
        return (await self._request("GET", "/models", None, None)).json()

    async def _post(self, path: str, body: dict[str, Any], model: str | None) -> Any:
        return (await self._request("POST", path, body, model)).json()

    async def _request(
        self, method: str, path: str, body: Any, model: str | None, accept: str = JSON
    ) -> httpx.Response:
        for attempt in itertools.count():
            try:
                response = await self._http.request(
                    method, path, json=body, headers={"Accept": accept}
                )
            except httpx.TimeoutException as exc:
                raise RequestTimeout(f"{method} {path}: no answer in time ({exc})") from exc
            except httpx.ConnectError as exc:
                delay = self._retry_delay(None, attempt)
                if delay is None:
                    raise ClientError(f"{method} {path}: cannot connect ({exc})") from exc
            else:
                delay = self._retry_delay(response, attempt)
                if delay is None:
                    return self._checked(response, model, track=path != "/models")
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")
