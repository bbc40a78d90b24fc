"""One error hierarchy for the service, and the two shapes of every error response.

Every error carries a message meant for the client: it names the field or item and the problem.
An error response has clipserve's shape, `{"status_code", "detail"}` (schemas.ErrorBody), except
under /v1/, where OpenAI's SDKs parse OpenAI's shape, and under /v2/, Cohere's `{"message"}`.
The server (http/exceptions.py maps litestar's own exceptions to these) and the gate render them
all through `error_body`. Nothing here imports litestar or torch: the gate starts without either.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import msgspec

from clipserve.schemas import CohereErrorBody, ErrorBody, OpenAIError, OpenAIErrorBody

OPENAI_PREFIX = "/v1/"  # the routes that answer in OpenAI's shapes
COHERE_PREFIX = "/v2/"  # and in Cohere's
# A clipserve message starts with the field it is about: "input[2]: ...", "model: ...".
_FIELD = re.compile(r"^([A-Za-z_][\w.\[\]]*): ")
_JSON_PATH = re.compile(r"at `\$\.([\w.\[\]]+)`")


class ClipServeError(Exception):
    """Base class; `status_code` is the HTTP status the client sees."""

    status_code = 500

    def __init__(self, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.headers = headers or {}


class InvalidInput(ClipServeError):
    """The request is well-formed JSON but an item or option is unusable (bad image, bad URL)."""

    status_code = 400


class UnknownModel(ClipServeError):
    """The request names a model this server does not serve."""

    status_code = 404


class Unauthorized(ClipServeError):
    """Missing or wrong API key (the server's auth middleware and the gate raise it)."""

    status_code = 401

    def __init__(self, message: str = "missing or invalid API key") -> None:
        super().__init__(message, headers={"WWW-Authenticate": 'Bearer realm="clipserve"'})


class PayloadTooLarge(ClipServeError):
    """A body, image or string is over its configured cap."""

    status_code = 413


class Overloaded(ClipServeError):
    """The batch queue is full or the server is draining; the client should retry."""

    status_code = 503

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class UpstreamError(ClipServeError):
    """An image URL could not be fetched (connection refused, HTTP error from the origin)."""

    status_code = 502


class UpstreamTimeout(ClipServeError):
    """An image URL took longer than the fetch timeout."""

    status_code = 504


# -- to HTTP -------------------------------------------------------------------------------


class HTTPError(NamedTuple):
    """What the client is told: status, message, extra headers."""

    status: int
    detail: str
    headers: dict[str, str] | None = None


def error_body(
    path: str, status: int, detail: str
) -> ErrorBody | OpenAIErrorBody | CohereErrorBody:
    """The body of an error response to a request for `path`, in the shape its client parses."""
    if path.startswith(COHERE_PREFIX):
        return CohereErrorBody(message=detail)  # Cohere's SDKs keep the status beside it
    if not path.startswith(OPENAI_PREFIX):
        return ErrorBody(status_code=status, detail=detail)
    # OpenAI's: `param` is the field the message names
    field = _FIELD.match(detail) or _JSON_PATH.search(detail)
    param = field.group(1) if field else None
    code = None
    if status == 401:
        code = "invalid_api_key"
    elif status == 404 and param == "model":
        code = "model_not_found"
    kind = "invalid_request_error" if status < 500 else "server_error"
    return OpenAIErrorBody(OpenAIError(message=detail, type=kind, param=param, code=code))


def encoded(path: str, exc: ClipServeError) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and JSON body for `exc`, for code that answers without litestar."""
    return (
        exc.status_code,
        exc.headers,
        msgspec.json.encode(error_body(path, exc.status_code, exc.message)),
    )
