"""The one mapping of exceptions to HTTP responses, for every route and middleware of the app.

A clipserve error (errors.py) says its own status and message; litestar's own exceptions (a
body that does not validate or is not JSON, an unknown path, a wrong method) are mapped here to
messages that name the field and the problem; anything else is a bug: logged, and 500 to the
client. The body takes the shape the request's path asks for (errors.error_body).
"""

from __future__ import annotations

import msgspec
from litestar import Request, Response
from litestar.exceptions import HTTPException, ValidationException
from litestar.types import ExceptionHandlersMap

from clipserve.errors import ClipServeError, HTTPError, error_body


def to_http(exc: BaseException) -> HTTPError:
    """Status, message and headers the client sees for `exc`."""
    if isinstance(exc, ClipServeError):
        return HTTPError(exc.status_code, exc.message, exc.headers)
    if isinstance(exc, RecursionError) and "deserializing" in str(exc):
        # msgspec's depth limit on a body like [[[[...]]]]: the body's fault, not the server's
        return HTTPError(400, f"request body is not valid JSON: nested too deeply ({exc})")
    if isinstance(exc, ValidationException):
        return HTTPError(400, f"invalid request body: {_validation_detail(exc)}")
    if isinstance(exc, HTTPException):
        cause = exc.__cause__
        while cause is not None and not isinstance(cause, msgspec.DecodeError):
            cause = cause.__cause__
        if cause is not None:
            return HTTPError(400, f"request body is not valid JSON: {cause}")
        return HTTPError(exc.status_code, exc.detail, exc.headers)
    return HTTPError(500, "internal error")


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
    """Every error response of the app, in the shape its path asks for."""
    status, detail, headers = to_http(exc)
    if status == 500 and not isinstance(exc, ClipServeError):
        request.logger.exception("unhandled error on %s", request.url.path)
    return Response(
        error_body(request.url.path, status, detail), status_code=status, headers=headers
    )


# One handler for every exception: litestar picks the closest class in the exception's MRO, and
# it wraps both each handler and the whole middleware stack, so an error raised in middleware
# (the API-key check) takes the same path as one raised in a handler.
EXCEPTION_HANDLERS: ExceptionHandlersMap = {Exception: error_response}
