"""Why a request to a host failed, in words, whichever HTTP library raised it.

huggingface_hub has changed HTTP libraries (requests, then httpx, then httpx2) and open_clip does
not pin it, so what its calls raise is recognised by the module its class comes from and by the
OS error underneath (DNS, refused, TLS, timeout), not by one class of one library.
"""

from __future__ import annotations

import socket
import ssl
from collections.abc import Iterator
from urllib.parse import urlsplit

# Packages whose exceptions mean "the request failed" (any class they define, by module).
HTTP_LIBRARIES = frozenset(
    {"httpx", "httpx2", "httpcore", "httpcore2", "h11", "h2", "requests", "urllib3"}
    | {"huggingface_hub"}
)


def is_request_failure(exc: BaseException) -> bool:
    """True for an OS-level error or any exception an HTTP library (or the hub client) raised."""
    if isinstance(exc, OSError):
        return True
    return any(cls.__module__.partition(".")[0] in HTTP_LIBRARIES for cls in type(exc).__mro__)


def host_of(url: str) -> str:
    """`host[:port]` of a URL, as messages name it (no credentials)."""
    return urlsplit(url).netloc.rpartition("@")[2] or url


def reason(exc: BaseException) -> str:
    """The cause in words: DNS, refused, TLS, timeout or an HTTP status; else the first line."""
    chain = list(_chain(exc))
    for err in chain:
        if isinstance(err, socket.gaierror):
            return f"the host name does not resolve (DNS: {err.strerror or err})"
    for err in chain:
        if isinstance(err, ConnectionRefusedError):
            return "connection refused (nothing listens on that port)"
        if isinstance(err, ssl.SSLCertVerificationError):
            return f"TLS certificate verification failed ({err.verify_message or err})"
        if isinstance(err, ssl.SSLError):
            return f"TLS failed ({err.reason or err})"
        if isinstance(err, TimeoutError) or "Timeout" in type(err).__name__:
            return "timed out"
        status = _status(err)
        if status:
            return f"answered {status}"
    return first_line(exc)


def first_line(exc: BaseException) -> str:
    """The exception's message cut to one line of at most 300 characters."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]


def _chain(exc: BaseException) -> Iterator[BaseException]:
    """The exception and every cause or context under it (each once)."""
    seen: set[int] = set()
    err: BaseException | None = exc
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        yield err
        err = err.__cause__ or err.__context__


def _status(err: BaseException) -> str | None:
    """`404 Not Found` for an error that carries an HTTP response (httpx, requests, the hub)."""
    response = getattr(err, "response", None)
    code = getattr(response, "status_code", None)
    if not isinstance(code, int):
        return None
    phrase = getattr(response, "reason_phrase", None) or getattr(response, "reason", None) or ""
    return f"{code} {phrase}".strip()
