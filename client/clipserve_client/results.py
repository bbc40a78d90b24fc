"""What comes back: results as numpy arrays and named tuples, and the errors raised."""

from __future__ import annotations

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


def embeddings_of(body: Any) -> np.ndarray:
    return np.asarray(body, dtype=np.float32)


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
