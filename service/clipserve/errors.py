"""One error hierarchy for the service, and the one mapping of errors to HTTP responses.

Every error carries a message meant for the client: it names the field or item and the problem.
Every error response has the same shape, `{"status_code", "detail"}` (schemas.ErrorBody).
"""

from __future__ import annotations

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


def error_response(status: int, detail: str, headers: dict[str, str] | None = None) -> Response:
    """The one error shape: {"status_code", "detail"}."""
    return Response(
        ErrorBody(status_code=status, detail=detail), status_code=status, headers=headers
    )


def _clipserve_error(_: Request, exc: ClipServeError) -> Response:
    return error_response(exc.status_code, exc.message, exc.headers)


def _validation_error(_: Request, exc: ValidationException) -> Response:
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


def _http_error(_: Request, exc: HTTPException) -> Response:
    cause = exc.__cause__
    while cause is not None and not isinstance(cause, msgspec.DecodeError):
        cause = cause.__cause__
    if cause is not None:
        return error_response(400, f"request body is not valid JSON: {cause}")
    return error_response(exc.status_code, exc.detail, exc.headers)


def _internal_error(request: Request, exc: Exception) -> Response:
    request.logger.exception("unhandled error on %s", request.url.path)
    return error_response(HTTP_500_INTERNAL_SERVER_ERROR, "internal error")


# litestar picks the handler of the closest class in the exception's MRO.
EXCEPTION_HANDLERS: ExceptionHandlersMap = {
    ClipServeError: _clipserve_error,
    ValidationException: _validation_error,
    HTTPException: _http_error,
    Exception: _internal_error,
}
