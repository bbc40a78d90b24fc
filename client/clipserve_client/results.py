"""What comes back: results as numpy arrays and named tuples, and the errors raised."""

from __future__ import annotations

import base64
import io
from typing import Any, NamedTuple

import httpx
import numpy as np


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
    """The model answering is not the one that answered before, or the same spec answers
    from another embedding space (new weights under its name): vectors are not comparable."""

    def __init__(
        self,
        requested: str | None,
        previous: str,
        current: str,
        previous_space: str | None = None,
        current_space: str | None = None,
    ) -> None:
        which = f"model {requested!r}" if requested else "the default model"
        was, now = repr(previous), repr(current)
        if previous_space != current_space:
            was, now = f"{was} (space {previous_space})", f"{now} (space {current_space})"
        super().__init__(
            f"{which} was {was} and is now {now}: embeddings from the two are not "
            "comparable; re-embed what you stored, then call reset() to go on"
        )
        self.previous = previous
        self.current = current
        self.previous_space = previous_space
        self.current_space = current_space


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


def detail_of(response: httpx.Response) -> str:
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


# What each embedding_type arrives as (base64 of little-endian bytes); binary types are the
# sign bits packed 8 per byte, so their rows have dim / 8 entries.
EMBEDDING_DTYPES: dict[str, np.dtype[Any]] = {
    "float": np.dtype("<f4"),
    "float16": np.dtype("<f2"),
    "int8": np.dtype("i1"),
    "uint8": np.dtype("u1"),
    "binary": np.dtype("i1"),
    "ubinary": np.dtype("u1"),
}


NPY = "application/x-npy"


def embeddings_of(response: httpx.Response, embedding_type: str = "float") -> np.ndarray:
    """A .npy body as the array it holds; or JSON: numbers as float32, or base64 rows (one
    string each) as the type's dtype."""
    dtype = EMBEDDING_DTYPES[embedding_type]
    if response.headers.get("content-type", "").split(";")[0].strip() == NPY:
        array = np.load(io.BytesIO(response.content), allow_pickle=False)
        if array.dtype != dtype or array.ndim != 2:
            raise ClientError(
                f"the server sent a {array.dtype} array of shape {array.shape} for "
                f"embedding_type {embedding_type!r}; expected {dtype} rows"
            )
    else:
        array = _json_rows(response.json(), embedding_type)
    # native byte order out, so the array behaves as any other (float16 on a big-endian host)
    return array.astype(dtype.newbyteorder("="), copy=False)


def _json_rows(body: Any, embedding_type: str) -> np.ndarray:
    if embedding_type == "float":
        return np.asarray(body, dtype=np.float32)
    raw = b"".join(base64.b64decode(row) for row in body)
    return np.frombuffer(raw, dtype=EMBEDDING_DTYPES[embedding_type]).reshape(len(body), -1)


def ranking_of(body: dict[str, Any]) -> Ranking:
    return Ranking(
        np.asarray(body["probabilities"], dtype=np.float32),
        np.asarray(body["cosine_similarities"], dtype=np.float32),
        np.asarray(body["scores"], dtype=np.float32),
        body["objective"],
    )


def predictions_of(body: dict[str, Any]) -> list[list[Prediction]]:
    return [
        [Prediction(p["label"], p["probability"]) for p in per_image]
        for per_image in body["predictions"]
    ]
