"""Credentials out of everything shown: a URL's `user:password@` and query string.

A checkpoint URL may carry credentials (`https://user:token@host/ckpt.pt`, a presigned
`?X-Amz-Signature=...`). The spec is what the API reports (X-Clip-Model, /models, /v1/models),
a label on the open /metrics and a word in every log line about its model, so each of those
shows `redact(spec)`; only the download itself reads the URL as given. The operator keeps its
own copy (clipserve_operator.redact): it does not import this package.
"""

from __future__ import annotations

import logging
import re
import traceback
from typing import Any

HIDDEN = "***"
# A URL inside any text: scheme://, then up to whitespace, a quote or an angle bracket, less
# the punctuation of the sentence around it ("... x.pt?sig=1: 403" keeps its colon).
_URL = re.compile(r"\b[a-zA-Z][a-zA-Z0-9+.-]*://(?:[^\s'\"<>]*[^\s'\"<>.,:;)\]])?")


def redact(text: str) -> str:
    """`text` with each URL's userinfo and query replaced by ***; the rest (host, path, a
    `#sha256=` fragment) kept, so the reader still knows which file is meant."""
    return _URL.sub(_redact_url, text) if "://" in text else text


def _redact_url(match: re.Match[str]) -> str:
    url = match.group(0)
    scheme, _, rest = url.partition("://")
    rest, hash_, fragment = rest.partition("#")
    rest, question, _query = rest.partition("?")
    authority, slash, path = rest.partition("/")  # urlsplit's split: the host ends at / ? #
    if "@" in authority:
        authority = f"{HIDDEN}@{authority.rpartition('@')[2]}"
    query = f"?{HIDDEN}" if question else ""
    return f"{scheme}://{authority}{slash}{path}{query}{hash_}{fragment}"


class _RedactedRecord(logging.LogRecord):
    """A log record whose message and traceback are redacted, whichever handlers and
    formatters end up writing it (litestar replaces the root's handlers when the app is built):
    a download error quotes its URL, httpx logs every request's."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if self.exc_info and self.exc_info[1] is not None:
            # Formatters print exc_text when it is set, and format exc_info only when it is not.
            self.exc_text = redact("".join(traceback.format_exception(*self.exc_info)).rstrip())

    def getMessage(self) -> str:
        return redact(super().getMessage())


def redact_logs() -> None:
    """From now on, every log record of the process is redacted."""
    logging.setLogRecordFactory(_RedactedRecord)
