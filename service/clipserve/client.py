"""A typed Python client for clipserve: `Client` and `AsyncClient` (httpx), numpy arrays out.

It needs httpx and numpy only, never torch: `pip install ./client` installs it alone (the
`clipserve-client` distribution). Both clients retry a 503 after the server's `Retry-After`
and a refused connection with backoff, send an API key, and check every response's
`X-Clip-Model`: once a client has seen which model answers (per requested model), a different
one raises `ModelChanged`, because vectors from two models must never be mixed.

    with Client("http://localhost:3000") as clip:
        vectors = clip.encode(texts=["a dog", "a cat"])          # float32 [2, dim]
        scores = clip.rank([image("dog.jpg")], ["a dog", "a cat"])
        top = clip.classify(["dog.jpg"], labels=["dog", "cat"])[0][0]  # Prediction(label, p)
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import itertools
import os
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple, Protocol, TypeAlias

import httpx
import numpy as np

MODEL_HEADER = "X-Clip-Model"
_URI_SCHEMES = ("http://", "https://", "data:")


class SavableImage(Protocol):
    """A PIL image, or anything that saves itself like one."""

    def save(self, fp: Any, format: str | None = None) -> None: ...


# An image: a URL or data: URI, a local path, the file's bytes, or a PIL image.
ImageSource: TypeAlias = str | os.PathLike[str] | bytes | SavableImage
# One request item as the server takes it: {"text": ...}, {"img_uri": ...} or {"img_blob": ...}.
Item: TypeAlias = dict[str, str]


class ClientError(Exception):
    """Base of the errors this client raises."""


class APIError(ClientError):
    """The server answered with an error; `detail` is its message (it names the field)."""

    def __init__(self, status_code: int, detail: str) -> None:
        super().__init__(f"HTTP {status_code}: {detail}")
        self.status_code = status_code
        self.detail = detail


class RequestTimeout(ClientError, TimeoutError):
    """The server did not answer within the client's timeout."""


class ModelChanged(ClientError):
    """The model answering is not the one that answered before: the embedding space changed."""

    def __init__(self, requested: str | None, previous: str, current: str) -> None:
        which = f"model {requested!r}" if requested else "the default model"
        super().__init__(
            f"{which} was {previous!r} and is now {current!r}: embeddings from the two are not "
            "comparable; re-embed what you stored, then call reset() to go on"
        )
        self.previous = previous
        self.current = current


class Prediction(NamedTuple):
    """One label and its probability for an image."""

    label: str
    probability: float


class Ranking(NamedTuple):
    """[queries, candidates] each: softmax over candidates, cosine similarities, and the
    model's own scores (`objective`: softmax, the same as probabilities; or sigmoid, each pair
    on its own, for SigLIP-style models)."""

    probabilities: np.ndarray
    cosine_similarities: np.ndarray
    scores: np.ndarray
    objective: str


def text(value: str) -> Item:
    """A text item (for rank; plain strings there are texts too)."""
    return {"text": value}


def image(source: ImageSource) -> Item:
    """An image item: URLs and data: URIs are sent for the server to fetch, anything else
    (a path, bytes, a PIL image) is sent inline as base64."""
    if isinstance(source, str):
        if source.startswith(_URI_SCHEMES):
            return {"img_uri": source}
        source = Path(source)
    if isinstance(source, os.PathLike):
        data = Path(source).read_bytes()
    elif isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
    elif hasattr(source, "save"):
        data = _png(source)
    else:
        raise TypeError(f"not an image source: {type(source).__name__}")
    return {"img_blob": base64.b64encode(data).decode("ascii")}


def _png(picture: Any) -> bytes:
    buf = io.BytesIO()
    if getattr(picture, "mode", "RGB") not in ("1", "L", "LA", "I", "P", "RGB", "RGBA"):
        picture = picture.convert("RGB")  # PNG has no CMYK or YCbCr
    picture.save(buf, format="PNG")
    return buf.getvalue()


def _item(value: str | Item | ImageSource) -> Item:
    if isinstance(value, str):
        return text(value)
    if isinstance(value, dict):
        return value
    return image(value)


def _texts(texts: str | Sequence[str] | None) -> list[str]:
    if texts is None:
        return []
    return [texts] if isinstance(texts, str) else list(texts)


def _images(images: ImageSource | Sequence[ImageSource] | None) -> list[ImageSource]:
    if images is None:
        return []
    if isinstance(images, str | bytes | os.PathLike) or hasattr(images, "save"):
        return [images]
    return list(images)


class _Core:
    """What both clients share: settings, request bodies, response checks, retry timing."""

    def __init__(
        self,
        base_url: str = "http://localhost:3000",
        *,
        api_key: str | None = None,
        model: str | None = None,
        expect_model: str | None = None,
        timeout: float = 60.0,
        retries: int = 3,
        max_retry_wait_s: float = 10.0,
        on_model_change: Literal["raise", "warn"] = "raise",
        transport: Any = None,
    ) -> None:
        """`model` picks a served model for every call (default: the server's default);
        `expect_model` is the spec stored vectors came from (checked on the first call);
        `api_key` defaults to $CLIPSERVE_API_KEY; a 503 or a refused connection is retried
        `retries` times, waiting at most `max_retry_wait_s`; `transport` goes to httpx."""
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.retries = retries
        self.max_retry_wait_s = max_retry_wait_s
        self.on_model_change = on_model_change
        self._seen: dict[str | None, str] = {}
        if expect_model is not None:
            self._seen[model] = expect_model
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

    def reset(self) -> None:
        """Forget which models answered (after re-embedding what was stored)."""
        self._seen.clear()

    def _encode_body(
        self,
        texts: str | Sequence[str] | None,
        images: ImageSource | Sequence[ImageSource] | None,
        normalize: bool,
        model: str | None,
    ) -> dict[str, Any]:
        items = [text(t) for t in _texts(texts)] + [image(i) for i in _images(images)]
        if not items:
            raise ValueError("give texts, images or both")
        return {"items": items, "normalize": normalize, **self._model_field(model)}

    def _rank_body(
        self, queries: Sequence[str | Item], candidates: Sequence[str | Item], model: str | None
    ) -> dict[str, Any]:
        return {
            "queries": [_item(q) for q in queries],
            "candidates": [_item(c) for c in candidates],
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
            "images": [image(i) for i in _images(images)],
            "labels": list(labels),
            **self._model_field(model),
        }
        if templates is not None:
            body["templates"] = list(templates)
        return body

    def _model_field(self, model: str | None) -> dict[str, str]:
        chosen = model if model is not None else self.model
        return {"model": chosen} if chosen is not None else {}

    def _accept(self, response: httpx.Response, model: str | None, *, track: bool) -> Any:
        """The JSON body of a success; APIError otherwise; ModelChanged if the model moved."""
        if response.status_code >= 400:
            raise APIError(response.status_code, _detail(response))
        served = response.headers.get(MODEL_HEADER)
        key = model if model is not None else self.model
        if track and served is not None:
            previous = self._seen.get(key)
            if previous is not None and previous != served:
                if self.on_model_change == "raise":
                    raise ModelChanged(key, previous, served)
                warnings.warn(str(ModelChanged(key, previous, served)), stacklevel=4)
            self._seen[key] = served
        return response.json()

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


def _detail(response: httpx.Response) -> str:
    try:
        body = response.json()
    except ValueError:
        return response.text[:500] or response.reason_phrase
    if isinstance(body, dict):
        if isinstance(body.get("error"), dict):  # the OpenAI-compatible routes
            return str(body["error"].get("message"))
        if "detail" in body:
            return str(body["detail"])
    return str(body)[:500]


def _embeddings(body: Any) -> np.ndarray:
    return np.asarray(body, dtype=np.float32)


def _ranking(body: dict[str, Any]) -> Ranking:
    return Ranking(
        np.asarray(body["probabilities"], dtype=np.float32),
        np.asarray(body["cosine_similarities"], dtype=np.float32),
        np.asarray(body["scores"], dtype=np.float32),
        body["objective"],
    )


def _predictions(body: dict[str, Any]) -> list[list[Prediction]]:
    return [
        [Prediction(p["label"], p["probability"]) for p in per_image]
        for per_image in body["predictions"]
    ]


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
        normalize: bool = False,
        model: str | None = None,
    ) -> np.ndarray:
        """Embeddings [len(texts) + len(images), dim], texts' rows first, in order."""
        body = self._encode_body(texts, images, normalize, model)
        return _embeddings(self._post("/encode", body, model))

    def rank(
        self,
        queries: Sequence[str | Item],
        candidates: Sequence[str | Item],
        *,
        model: str | None = None,
    ) -> Ranking:
        """Every candidate scored against every query; strings are texts, image(...) images."""
        return _ranking(self._post("/rank", self._rank_body(queries, candidates, model), model))

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
        return _predictions(self._post("/classify", body, model))

    def models(self) -> dict[str, Any]:
        """The server's /models."""
        return self._request("GET", "/models", None, None)

    def _post(self, path: str, body: dict[str, Any], model: str | None) -> Any:
        return self._request("POST", path, body, model)

    def _request(self, method: str, path: str, body: Any, model: str | None) -> Any:
        for attempt in itertools.count():
            try:
                response = self._http.request(method, path, json=body)
            except httpx.TimeoutException as exc:
                raise RequestTimeout(f"{method} {path}: no answer in time ({exc})") from exc
            except httpx.ConnectError as exc:
                delay = self._retry_delay(None, attempt)
                if delay is None:
                    raise ClientError(f"{method} {path}: cannot connect ({exc})") from exc
            else:
                delay = self._retry_delay(response, attempt)
                if delay is None:
                    return self._accept(response, model, track=path != "/models")
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
        normalize: bool = False,
        model: str | None = None,
    ) -> np.ndarray:
        """Embeddings [len(texts) + len(images), dim], texts' rows first, in order."""
        body = self._encode_body(texts, images, normalize, model)
        return _embeddings(await self._post("/encode", body, model))

    async def rank(
        self,
        queries: Sequence[str | Item],
        candidates: Sequence[str | Item],
        *,
        model: str | None = None,
    ) -> Ranking:
        """Every candidate scored against every query; strings are texts, image(...) images."""
        body = self._rank_body(queries, candidates, model)
        return _ranking(await self._post("/rank", body, model))

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
        return _predictions(await self._post("/classify", body, model))

    async def models(self) -> dict[str, Any]:
        """The server's /models."""
        return await self._request("GET", "/models", None, None)

    async def _post(self, path: str, body: dict[str, Any], model: str | None) -> Any:
        return await self._request("POST", path, body, model)

    async def _request(self, method: str, path: str, body: Any, model: str | None) -> Any:
        for attempt in itertools.count():
            try:
                response = await self._http.request(method, path, json=body)
            except httpx.TimeoutException as exc:
                raise RequestTimeout(f"{method} {path}: no answer in time ({exc})") from exc
            except httpx.ConnectError as exc:
                delay = self._retry_delay(None, attempt)
                if delay is None:
                    raise ClientError(f"{method} {path}: cannot connect ({exc})") from exc
            else:
                delay = self._retry_delay(response, attempt)
                if delay is None:
                    return self._accept(response, model, track=path != "/models")
            await asyncio.sleep(delay)
        raise AssertionError("unreachable")
