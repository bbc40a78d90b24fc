"""One error hierarchy for the service, and the one mapping of errors to HTTP responses.

Every error carries a message meant for the client: it names the field or item and the problem.
Every error response has the same shape, `{"status_code", "detail"}` (schemas.ErrorBody), except
on the OpenAI-compatible routes, which answer in OpenAI's (openai_compat.py) from the same
mapping.
"""

from __future__ import annotations

from typing import NamedTuple

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.status_codes import HTTP_500_INTERNAL_SERVER_ERROR
from litestar.types import ExceptionHandlersMap

from clipserve.schemas import ErrorBody


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
    """Missing or wrong API key."""

    status_code = 401


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


def http_error(request: Request, exc: Exception) -> HTTPError:
    """The one mapping of an exception to what the client sees (every error shape uses it)."""
    if isinstance(exc, ClipServeError):
        return HTTPError(exc.status_code, exc.message, exc.headers)
    if isinstance(exc, ValidationException):
        return HTTPError(400, f"invalid request body: {_validation_detail(exc)}")
    if isinstance(exc, HTTPException):
        cause = exc.__cause__
        while cause is not None and not isinstance(cause, msgspec.DecodeError):
            cause = cause.__cause__
        if cause is not None:
            return HTTPError(400, f"request body is not valid JSON: {cause}")
        return HTTPError(exc.status_code, exc.detail, exc.headers)
    request.logger.exception("unhandled error on %s", request.url.path)
    return HTTPError(HTTP_500_INTERNAL_SERVER_ERROR, "internal error")


def _validation_detail(exc: ValidationException) -> str:
    # msgspec's own message names the problem and the JSON path ("Expected `str | null`, got
    # `int` - at `$.data[0].text`"); litestar's summary can drop the path, so prefer the cause.
    cause = exc.__cause__
    if isinstance(cause, msgspec.ValidationError):
        return str(cause).replace("`$.data", "`$")
    extra = exc.extra if isinstance(exc.extra, list) else []
    return (
        "; ".join(str(e.get("message", e)) if isinstance(e, dict) else str(e) for e in extra)
        or exc.detail
    )


def error_response(request: Request, exc: Exception) -> Response:
    """The clipserve error shape: {"status_code", "detail"}."""
    status, detail, headers = http_error(request, exc)
    return Response(
        ErrorBody(status_code=status, detail=detail), status_code=status, headers=headers
    )


# One key, so a route can replace the whole mapping with its own shape (/v1/*: OpenAI's);
# litestar merges the layers' maps and picks the closest class in the exception's MRO.
EXCEPTION_HANDLERS: ExceptionHandlersMap = {Exception: error_response}
