"""What an embeddings response is sent as: JSON, a .npy array, or msgpack, by the `Accept`
header (RFC 9110 content negotiation), for /encode and /v1/embeddings.

- application/json (the default, and what `*/*` gets): the response Struct, vectors as numbers
  or base64 as the body asks.
- application/x-npy: one C-contiguous array of shape (n, d) in NumPy's .npy format, its dtype
  the embedding type's (<f4, <f2, i1, u1; binary i1 and ubinary u1 of d / 8 packed bits). What
  the JSON body carries besides the vectors comes in headers (X-Clip-Model, TYPE_HEADER,
  SHAPE_HEADER, and the usage headers on /v1/embeddings); every media type gets them.
- application/msgpack (or application/x-msgpack, answered as asked): the JSON response's own
  object, each embedding a msgpack bin of its raw little-endian bytes.
Large batches are where this pays: no number formatting on the server, no number parsing on
the client, and a float32 component is 4 bytes instead of ~21 as a JSON number
(docs/performance.md, "Wire formats").
Errors stay JSON in the API's own shape whatever was asked (http/exceptions.py).
"""

from __future__ import annotations

import io
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np
from litestar import Response
from litestar.openapi.spec import OpenAPIMediaType as Content
from litestar.openapi.spec import OpenAPIResponse, Operation, Schema
from litestar.openapi.spec.enums import OpenAPIFormat, OpenAPIType

from clipserve.errors import ClipServeError
from clipserve.http.middleware import MODEL_HEADER, SPACE_HEADER

JSON = "application/json"
NPY = "application/x-npy"
MSGPACK = "application/msgpack"
X_MSGPACK = "application/x-msgpack"  # the older name, which many clients still send
OFFERED = (JSON, NPY, MSGPACK, X_MSGPACK)  # in the server's order of preference for ties

# What a .npy client cannot read from a body it does not parse as JSON.
TYPE_HEADER = "X-Embedding-Type"  # the embedding_type asked for: float, float16, ..., ubinary
SHAPE_HEADER = "X-Embedding-Shape"  # "rows,columns" of the array (columns: dim / 8 if packed)
PROMPT_TOKENS_HEADER = "X-Usage-Prompt-Tokens"  # /v1/embeddings' usage.prompt_tokens
TOTAL_TOKENS_HEADER = "X-Usage-Total-Tokens"  # and usage.total_tokens


class NotAcceptable(ClipServeError):
    """The `Accept` header admits none of the media types the route can answer in."""

    status_code = 406


@dataclass(frozen=True)
class _Range:
    """One media range of an Accept header: `type/subtype` (either may be `*`), its q."""

    maintype: str
    subtype: str
    q: float
    position: int

    def specificity(self, media_type: str) -> int | None:
        """How closely this range names `media_type` (2 exact, 1 type/*, 0 */*), or None."""
        maintype, subtype = media_type.split("/")
        if self.maintype == "*":
            return 0 if self.subtype == "*" else None
        if self.maintype != maintype:
            return None
        if self.subtype == "*":
            return 1
        return 2 if self.subtype == subtype else None


def _ranges(accept: str) -> list[_Range]:
    out = []
    for position, part in enumerate(accept.split(",")):
        media, *params = (p.strip() for p in part.split(";"))
        maintype, slash, subtype = media.lower().partition("/")
        if not slash or not maintype or not subtype:
            continue  # not a media range: it admits nothing
        q = 1.0
        for param in params:
            name, _, value = param.partition("=")
            if name.strip().lower() == "q":
                try:
                    q = min(max(float(value), 0.0), 1.0)
                except ValueError:
                    q = 0.0  # a weight that is not a number admits nothing
        out.append(_Range(maintype, subtype, q, position))
    return out


def negotiate(accept: str | None, offered: Sequence[str] = OFFERED) -> str:
    """The media type to answer in: each offered type takes the q of the most specific range
    that names it (RFC 9110 12.5.1), q=0 refuses it; the highest q wins, then the more specific
    range, then the one the client listed first, then the server's order (JSON first). No
    Accept header, or an empty one, means JSON."""
    if accept is None or not accept.strip():
        return offered[0]
    ranges = _ranges(accept)
    best: tuple[float, int, int, int] | None = None
    chosen = None
    for order, media_type in enumerate(offered):
        matches = [(s, r) for r in ranges if (s := r.specificity(media_type)) is not None]
        if not matches:
            continue
        spec, rng = max(matches, key=lambda m: (m[0], -m[1].position))
        if rng.q <= 0:
            continue
        rank = (rng.q, spec, -rng.position, -order)
        if best is None or rank > best:
            best, chosen = rank, media_type
    if chosen is None:
        raise NotAcceptable(
            f"Accept: {accept[:200]!r} admits none of the types this route answers in: "
            f"{', '.join(offered)} (errors are always JSON)"
        )
    return chosen


def npy(rows: np.ndarray) -> bytes:
    """`rows` as a .npy file: little-endian, C order, no pickle."""
    buffer = io.BytesIO()
    little = np.ascontiguousarray(rows, dtype=rows.dtype.newbyteorder("<"))
    np.lib.format.write_array(buffer, little, allow_pickle=False)
    return buffer.getvalue()


def raw_rows(rows: np.ndarray) -> list[bytes]:
    """Each row as its raw little-endian bytes (msgpack's bin), as base64 would hold them."""
    little = np.ascontiguousarray(rows, dtype=rows.dtype.newbyteorder("<"))
    return [row.tobytes() for row in little]


def embedding_headers(model: str, space: str, kind: str, rows: np.ndarray) -> dict[str, str]:
    """The headers every embeddings response carries, whatever its media type."""
    return {
        MODEL_HEADER: model,
        SPACE_HEADER: space,
        TYPE_HEADER: kind,
        SHAPE_HEADER: ",".join(str(n) for n in rows.shape),
        "Vary": "Accept",
    }


def binary_response(
    media_type: str, rows: np.ndarray, msgpack_body: object, headers: dict[str, str]
) -> Response[Any]:
    """A .npy body of `rows`, or `msgpack_body` (the JSON response's object with bin rows)."""
    body = npy(rows) if media_type == NPY else msgspec.msgpack.encode(msgpack_body)
    return Response(body, media_type=media_type, headers=headers)


# -- OpenAPI: the 200 response's other media types -------------------------------------------

_NPY_DOC = (
    "One array of shape (n, d) in NumPy's .npy format, C order, dtype by embedding_type: "
    "<f4 (float), <f2 (float16), i1 (int8, binary), u1 (uint8, ubinary; binary types have "
    f"d / 8 columns of packed sign bits). Headers: {MODEL_HEADER}, {SPACE_HEADER}, {TYPE_HEADER}, "
    f"{SHAPE_HEADER} (rows,columns); on /v1/embeddings also {PROMPT_TOKENS_HEADER} and "
    f"{TOTAL_TOKENS_HEADER} (the JSON's usage)"
)
_MSGPACK_DOC = (
    "The JSON response's object in msgpack, each embedding a bin of its raw little-endian "
    "bytes (the embedding_type's, as base64 would hold them); `encoding` and "
    "`encoding_format` choose only within JSON"
)


@dataclass
class EmbeddingsOperation(Operation):
    """An operation whose 200 may also be .npy or msgpack (by Accept), documented as such."""

    def __post_init__(self) -> None:
        ok = (self.responses or {}).get("200")
        if not isinstance(ok, OpenAPIResponse) or ok.content is None:
            return
        ok.content[NPY] = _binary(_NPY_DOC)
        ok.content[MSGPACK] = ok.content[X_MSGPACK] = _binary(_MSGPACK_DOC)
        ok.description += "; by Accept, also application/x-npy or msgpack (errors stay JSON)"


def _binary(description: str) -> Content:
    return Content(
        schema=Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY, description=description)
    )
