"""Embedding types: a float32 vector as float16, scalar-quantized int8/uint8, or sign bits,
and each as JSON numbers or base64 of its raw little-endian bytes.

The conventions (README, "Embedding types"):
- int8 = rint(clip(x, -1, 1) * 127), in [-127, 127]: symmetric, so -x stays -q and a dot
  product of two int8 vectors is 127^2 times the float one up to rounding;
- uint8 = rint((clip(x, -1, 1) + 1) * 127.5), in [0, 255];
- ubinary = numpy.packbits(x > 0) (big-endian bit order: the first dimension is the high bit of
  the first byte), as sentence-transformers' `quantize_embeddings` and Cohere pack them;
- binary = ubinary - 128 as int8, sentence-transformers' convention.
A fixed range rather than one calibrated on a corpus: every response is reproducible from the
float vector alone, and vectors from different requests stay comparable. Normalized vectors lie
in [-1, 1], so int8/uint8 are made from normalized vectors only (the callers see to it).
"""

from __future__ import annotations

from typing import get_args

import numpy as np
import pybase64

from clipserve.errors import InvalidInput
from clipserve.schemas import EmbeddingType

EMBEDDING_TYPES: tuple[str, ...] = get_args(get_args(EmbeddingType)[0])
# int8 and uint8 assume components in [-1, 1]: they need normalized vectors.
SCALED = frozenset({"int8", "uint8"})
PACKED = frozenset({"binary", "ubinary"})
Row = list[float] | str  # a vector as numbers (ints are floats to the type checker) or base64


def convert(vectors: np.ndarray, kind: str, where: str) -> np.ndarray:
    """float32 rows [n, dim] as `kind`: float32, float16, int8, uint8, or [n, dim / 8] bytes."""
    x = np.asarray(vectors, dtype=np.float32)
    if kind == "float":
        return x
    if kind == "float16":
        return x.astype(np.float16)
    if kind == "int8":
        return np.rint(np.clip(x, -1.0, 1.0) * 127.0).astype(np.int8)
    if kind == "uint8":
        return np.rint((np.clip(x, -1.0, 1.0) + 1.0) * 127.5).astype(np.uint8)
    if kind in PACKED:
        if x.shape[1] % 8:
            raise InvalidInput(
                f"{where}: {kind} packs 8 dimensions per byte, and {x.shape[1]} dimensions are "
                "not divisible by 8; ask for another type"
            )
        bits = np.packbits(x > 0, axis=1)  # big-endian bit order, numpy's default
        # int8 = uint8 - 128: computed in int16 so that it does not wrap
        return bits if kind == "ubinary" else (bits.astype(np.int16) - 128).astype(np.int8)
    raise InvalidInput(f"{where}: {kind!r} is not an embedding type; one of {EMBEDDING_TYPES}")


def as_json(rows: np.ndarray) -> list[Row]:
    """Rows as JSON numbers (float16 values as the floats they are exactly)."""
    if rows.dtype == np.float16:
        return rows.astype(np.float32).tolist()
    return rows.tolist()


def as_base64(rows: np.ndarray) -> list[Row]:
    """Each row as base64 of its little-endian bytes (float32 as OpenAI's base64)."""
    little = np.ascontiguousarray(rows, dtype=rows.dtype.newbyteorder("<"))
    return [pybase64.b64encode(row.tobytes()).decode("ascii") for row in little]


def serialized(rows: np.ndarray, *, base64: bool) -> list[Row]:
    """Converted rows (see `convert`), each as JSON numbers or a base64 string."""
    return as_base64(rows) if base64 else as_json(rows)


def encoded(vectors: np.ndarray, kind: str, *, base64: bool, where: str) -> list[Row]:
    """Rows as `kind`, each as JSON numbers or a base64 string."""
    return serialized(convert(vectors, kind, where), base64=base64)


def normalize_for(kind: str, normalize: bool | None) -> bool:
    """Whether /encode normalizes: as asked (default no), but always for int8 and uint8,
    whose fixed [-1, 1] scale means nothing for an unnormalized vector."""
    if kind not in SCALED:
        return bool(normalize)
    if normalize is False:
        raise InvalidInput(
            f"normalize: {kind} scales the normalized vector's [-1, 1] to integers; leave "
            "normalize out or true, or ask for float or float16"
        )
    return True
