"""The bearer API-key check, shared by `clipserve serve` (middleware.ApiKeyAuth) and
`clipserve gate`; it imports nothing heavy, since the gate starts without torch or litestar.
The keys themselves come from Settings.api_keys (--api-key, --api-key-file, CLIPSERVE_API_KEY*);
a request that fails the check gets errors.Unauthorized."""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Sequence


def authorized(headers: Iterable[tuple[bytes, bytes]], keys: Sequence[bytes]) -> bool:
    """True when the request's (ASGI, lower-case) Authorization header is `Bearer <a key>`."""
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            # compare against every key so timing says nothing about which one matched
            return scheme.lower() == b"bearer" and any(
                [hmac.compare_digest(token.strip(), k) for k in keys]
            )
    return False
