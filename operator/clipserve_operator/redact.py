"""Credentials out of the status, events and logs: a URL's `user:password@` and query.

A model spec may be a checkpoint URL with credentials (`https://user:token@host/ckpt.pt`, a
presigned `?X-Amz-Signature=...`), and a failed download's last words quote it. Conditions,
events and status.weights are read far more widely than the ClipService's spec (events by
anyone who may list them in the namespace), so each shows `redact(text)`; the operator's log
lines (a spec in "created Job ... with", an exception quoting a URL) are redacted as a whole.
The same rule as the server's clipserve.redact, copied: the operator's image does not install
the service package.
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
    formatters kopf sets up write it."""

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
