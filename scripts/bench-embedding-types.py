"""Response size and client-side decode time of each embedding type, for 1,024 x 512 vectors.

Usage: .venv/bin/python scripts/bench-embedding-types.py [ROWS DIM]
The bodies are /encode's object form as the server sends them: the service's own transforms
(engine/embedding_types.py) encoded by msgspec, as litestar encodes a response; no model and no
HTTP, so the numbers are the encoding's alone. The vectors are random and L2-normalized (the
sizes of JSON numbers depend a little on the values; the base64 sizes do not). Decoding is what
clipserve_client does with a body: json.loads (httpx's response.json()), then numpy (JSON
numbers: np.asarray; base64: b64decode and np.frombuffer). Prints the median of REPEATS decodes.
"""

from __future__ import annotations

import base64
import json
import os
import statistics
import sys
import time

import msgspec
import numpy as np
from clipserve.engine.embedding_types import EMBEDDING_TYPES, encoded
from clipserve_client.results import EMBEDDING_DTYPES

REPEATS = 15


def decode(body: bytes, kind: str, as_base64: bool) -> np.ndarray:
    rows = json.loads(body)
    if not as_base64:
        return np.asarray(rows, dtype=np.float32 if kind == "float" else EMBEDDING_DTYPES[kind])
    raw = b"".join(base64.b64decode(r) for r in rows)
    return np.frombuffer(raw, dtype=EMBEDDING_DTYPES[kind]).reshape(len(rows), -1)


def median_ms(body: bytes, kind: str, as_base64: bool) -> float:
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        decode(body, kind, as_base64)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main(rows: int, dim: int) -> None:
    x = np.random.default_rng(0).standard_normal((rows, dim), dtype=np.float32)
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    load = os.getloadavg()[0]
    print(f"{rows} x {dim} vectors; decode: median of {REPEATS}; load average {load:.2f}")
    print(
        f"| {'type':<8} | {'encoding':<8} | {'bytes':>10} | {'x JSON float':>12} | "
        f"{'decode ms':>9} | {'x JSON float':>12} |"
    )
    print("|---|---|---:|---:|---:|---:|")
    base_size = base_ms = 0.0
    for kind in EMBEDDING_TYPES:
        for as_base64 in (False, True):
            body = msgspec.json.encode(encoded(x, kind, base64=as_base64, where="embedding_type"))
            ms = median_ms(body, kind, as_base64)
            if not base_size:
                base_size, base_ms = len(body), ms
            print(
                f"| {kind:<8} | {'base64' if as_base64 else 'json':<8} | {len(body):>10,} | "
                f"{len(body) / base_size:>12.3f} | {ms:>9.2f} | {ms / base_ms:>12.3f} |"
            )


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3])) if len(sys.argv) > 2 else main(1024, 512)
