"""A schemathesis check for fuzzing through `clipserve gate` (fuzz_driver's gate mode): the exact
request the gate was sent, sent to the server itself, must get the same answer: the gate adds,
drops or changes nothing (a decoded path, a lost body, an error of its own would differ).
Loaded with SCHEMATHESIS_HOOKS=tests.support.fuzz_gate_hooks; CLIPSERVE_FUZZ_DIRECT names the
server."""

from __future__ import annotations

import os
from urllib.parse import urlsplit, urlunsplit

import requests
import schemathesis

DIRECT = os.environ.get("CLIPSERVE_FUZZ_DIRECT", "")


@schemathesis.check
def same_answer_as_the_server(
    ctx: schemathesis.CheckContext, response: schemathesis.Response, case: schemathesis.Case
) -> None:
    """The server's status for the same request; for an error, its body too (a 200's vectors
    may differ in their last bits between batches)."""
    sent = response.request.copy()
    parts = urlsplit(sent.url or "")
    sent.url = urlunsplit(parts._replace(netloc=urlsplit(DIRECT).netloc))
    sent.headers.pop("Host", None)
    with requests.Session() as session:
        direct = session.send(sent, timeout=60)
    where = f"{sent.method} {parts.path}{'?' + parts.query if parts.query else ''}"
    if direct.status_code != response.status_code:
        raise AssertionError(
            f"{where}: {response.status_code} through the gate, {direct.status_code} from the "
            f"server: {response.text[:300]!r} vs {direct.text[:300]!r}"
        )
    if response.status_code >= 400 and direct.content != response.content:
        raise AssertionError(
            f"{where}: the gate's {response.status_code} differs from the server's: "
            f"{response.text[:300]!r} vs {direct.text[:300]!r}"
        )
