"""Response bytes, round trip and client-side decode time of one /encode of 1,024 x 512 float32
vectors, in each wire format: JSON numbers, base64 in JSON, .npy, msgpack.

Usage: .venv/bin/python scripts/bench-payload.py [MODEL]
Starts a real `clipserve serve` (clipserve.bench.server) with MODEL, default ViT-B-32:random
(open_clip's architecture, random weights, 512-d; nothing downloaded), fp32 on CPU. 1,024
distinct texts are embedded once to fill the embedding cache, so every timed request is a cache
hit and the round trip is the server's encoding, the transfer over loopback and the client's
read, not the model. Decoding is what clipserve_client does with a response (its
`embeddings_of`: json.loads then numpy for JSON, numpy.load for .npy); msgpack, which the client
does not use, is msgspec.msgpack.decode then numpy.frombuffer. Each format's array is checked
equal to the JSON one. Prints medians of REPEATS.
"""

from __future__ import annotations

import base64
import os
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial

import httpx
import msgspec
import numpy as np
from clipserve.bench.server import start_server
from clipserve_client.results import embeddings_of

REPEATS = 15
ROWS = 1024
Decode = Callable[[httpx.Response], np.ndarray]


def from_base64(response: httpx.Response) -> np.ndarray:
    """As clipserve_client reads base64 rows (it sends them for the types other than float)."""
    rows = response.json()
    raw = b"".join(base64.b64decode(r) for r in rows)
    return np.frombuffer(raw, dtype="<f4").reshape(len(rows), -1)


def from_msgpack(response: httpx.Response) -> np.ndarray:
    rows = msgspec.msgpack.decode(response.content)
    return np.frombuffer(b"".join(rows), dtype="<f4").reshape(len(rows), -1)


# name: (extra body fields, Accept, the client's decoding)
FORMATS: dict[str, tuple[dict[str, str], str, Decode]] = {
    "JSON float": ({}, "application/json", lambda r: embeddings_of(r, "float")),
    "base64 float": ({"encoding": "base64"}, "application/json", from_base64),
    "npy": ({}, "application/x-npy", lambda r: embeddings_of(r, "float")),
    "msgpack": ({}, "application/msgpack", from_msgpack),
}


def median_ms(action: Callable[[], object]) -> float:
    times = []
    for _ in range(REPEATS):
        start = time.perf_counter()
        action()
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main(model: str) -> None:
    server = start_server(model, env={"CLIPSERVE_DTYPE": "fp32", "HF_HUB_OFFLINE": "1"})
    items = [{"text": f"a photo of thing number {i}"} for i in range(ROWS)]
    try:
        with httpx.Client(base_url=server.url, timeout=600) as http:

            def post(extra: dict[str, str], accept: str) -> httpx.Response:
                body = {"items": items, "normalize": True, **extra}
                r = http.post("/encode", json=body, headers={"Accept": accept})
                r.raise_for_status()
                assert r.headers["content-type"].startswith(accept), r.headers
                return r

            reference = embeddings_of(post({}, "application/json"), "float")  # fills the cache
            print(
                f"{ROWS} x {reference.shape[1]} float32 vectors from {model} (random weights, "
                f"fp32, CPU); medians of {REPEATS}; load average {os.getloadavg()[0]:.2f}"
            )
            print(
                "| format | response bytes | x JSON | round trip ms | x JSON | decode ms | x JSON |"
            )
            print("|---|---:|---:|---:|---:|---:|---:|")
            base: tuple[float, float, float] | None = None
            for name, (extra, accept, decode) in FORMATS.items():
                response = post(extra, accept)
                np.testing.assert_array_equal(decode(response), reference)
                size = float(len(response.content))
                trip = median_ms(partial(post, extra, accept))
                ms = median_ms(partial(decode, response))
                base = base or (size, trip, ms)
                print(
                    f"| {name} | {size:,.0f} | {size / base[0]:.3g} | {trip:.1f} | "
                    f"{trip / base[1]:.3g} | {ms:.2f} | {ms / base[2]:.3g} |"
                )
    finally:
        server.stop()


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "ViT-B-32:random")
