"""A typed Python client for clipserve: `Client` and `AsyncClient` (httpx), numpy arrays out.

It needs httpx and numpy only, never torch: `pip install ./client` installs it alone (the
`clipserve-client` distribution, which holds no server code). Both clients retry a 503 after
the server's `Retry-After` and a refused connection with backoff, send an API key, and check
every response's `X-Clip-Model` and `X-Clip-Space`: once a client has seen which model and
embedding space answer (per requested model), a different one (another model, or new weights
under the same spec) raises `ModelChanged`, because vectors from two spaces must never be mixed.

    with Client("http://localhost:3000") as clip:
        vectors = clip.encode(texts=["a dog", "a cat"])          # float32 [2, dim]
        scores = clip.rank([image("dog.jpg")], ["a dog", "a cat"])
        top = clip.classify(["dog.jpg"], labels=["dog", "cat"])[0][0]  # Prediction(label, p)
"""

from clipserve_client.clients import MODEL_HEADER, SPACE_HEADER, AsyncClient, Client, EmbeddingType
from clipserve_client.items import ImageSource, Item, image, text
from clipserve_client.results import (
    APIError,
    ClientError,
    ModelChanged,
    Prediction,
    Ranking,
    RequestTimeout,
)

__all__ = [
    "MODEL_HEADER",
    "SPACE_HEADER",
    "APIError",
    "AsyncClient",
    "Client",
    "ClientError",
    "EmbeddingType",
    "ImageSource",
    "Item",
    "ModelChanged",
    "Prediction",
    "Ranking",
    "RequestTimeout",
    "image",
    "text",
]
