"""A bounded async HTTP load generator for /encode: ready-made bodies, latencies, errors.

Bodies come from workloads.py, encoded before the clock starts, so the generator spends its
CPU on HTTP alone (it usually shares the machine with the server it measures).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import httpx


@dataclass
class LoadResult:
    """What one (workload, concurrency) run delivered."""

    workload: str
    concurrency: int
    items_per_request: int
    requests: int
    errors: int
    seconds: float
    items_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    client_cpu_s: float  # this process's CPU time during the run (it shares the machine)
    server_cpu_s: float | None = None
    error_samples: list[str] = field(default_factory=list)
    ratio: float | None = None  # items/s over the peak ceiling of the workload's modality
    ratio_sustained: float | None = None  # ... over its sustained ceiling
    # the bare model's sustained items/s measured right after this run, and items/s over it
    bare_now_items_per_s: float | None = None
    ratio_now: float | None = None
    # mean items per forward pass, per modality, from the server's metrics: at or near the max
    # batch size the model was never starved; well below it, the requests did not keep up
    mean_batch: dict[str, float] | None = None


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100), linear interpolation; NaN when empty."""
    if not values:
        return float("nan")
    s = sorted(values)
    pos = (len(s) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


class RawConnection:
    """One keep-alive HTTP/1.1 connection that POSTs ready-made bodies over asyncio streams.

    Why not httpx here: measured on the 2-core test machine, httpx spends ~4.7 ms of client CPU
    per request, more than the server's whole per-request overhead (~3 ms); on a shared machine
    the load generator would then measure itself. This costs a fraction of that. Plain http only.
    """

    def __init__(self, url: str, path: str, headers: dict[str, str]) -> None:
        u = urlsplit(url)
        self._host, self._port = u.hostname or "127.0.0.1", u.port or 80
        lines = [
            f"POST {u.path.rstrip('/')}{path} HTTP/1.1",
            f"host: {u.netloc}",
            *(f"{k}: {v}" for k, v in headers.items()),
        ]
        self._head = ("\r\n".join(lines) + "\r\ncontent-length: ").encode()
        self._streams: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        """The open connection, opened now if it is not (post opens it when needed)."""
        if self._streams is None:
            self._streams = await asyncio.open_connection(self._host, self._port)
        return self._streams

    async def post(self, body: bytes) -> tuple[int, bytes]:
        """(status, response body); reconnects after any failure."""
        reader, writer = await self.connect()
        try:
            writer.writelines([self._head, b"%d\r\n\r\n" % len(body), body])
            head = (await reader.readuntil(b"\r\n\r\n")).lower()
            status = int(head[9:12])
            at = head.find(b"\r\ncontent-length:")
            if at < 0:
                raise ConnectionError("response without content-length")
            length = int(head[at + 17 : head.index(b"\r\n", at + 2)])
            data = await reader.readexactly(length)
            if b"\r\nconnection: close" in head:
                self.close()
            return status, data
        except BaseException:
            self.close()
            raise

    def close(self) -> None:
        if self._streams is not None:
            self._streams[1].close()
            self._streams = None


async def run_load(
    url: str,
    bodies: Sequence[bytes],
    *,
    concurrency: int,
    requests: int,
    workload: str = "",
    items_per_request: int = 1,
    headers: dict | None = None,
    warmup: int | None = None,
    cpu_of: Callable[[], float] | None = None,
    client: str = "raw",
    between: Callable[[], None] | None = None,
) -> LoadResult:
    """POST `requests` bodies to `url`/encode with at most `concurrency` in flight.

    `client` is `raw` (RawConnection, http only) or `httpx` (https too, but costlier).
    `between` (concurrency 1 only) runs after each recorded request, while nothing is in
    flight: the bench times a bare forward pass there, so both see the same moment of a
    machine whose speed drifts. Its time is not counted in items/s."""
    if between is not None and concurrency != 1:
        raise ValueError("`between` needs concurrency 1")
    hdrs = {"content-type": "application/json", **(headers or {})}
    latencies: list[float] = []
    errors: list[str] = []
    paused = [0.0, 0.0]  # seconds, and CPU seconds, spent in `between`
    use_httpx = client == "httpx" or not url.startswith("http://")
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=120, headers=hdrs) as hc:

        async def post_httpx(body: bytes) -> tuple[int, bytes]:
            r = await hc.post("/encode", content=body)
            return r.status_code, r.content

        conns = [RawConnection(url, "/encode", hdrs) for _ in range(concurrency)]

        async def worker(n: int, todo: list[int], record: bool) -> None:
            post = post_httpx if use_httpx else conns[n].post
            while todo:
                i = todo.pop()
                start = time.perf_counter()
                try:
                    status, data = await asyncio.wait_for(post(bodies[i % len(bodies)]), 300)
                    ok, why = status == 200, f"HTTP {status}: {data[:200].decode(errors='replace')}"
                except (
                    OSError,
                    ValueError,
                    EOFError,
                    TimeoutError,
                    httpx.HTTPError,
                    asyncio.IncompleteReadError,
                ) as exc:
                    ok, why = False, f"{type(exc).__name__}: {exc}"
                if record:
                    latencies.append(time.perf_counter() - start)
                    if not ok:
                        errors.append(why)
                    if between is not None:
                        start, cpu = time.perf_counter(), time.process_time()
                        between()
                        paused[0] += time.perf_counter() - start
                        paused[1] += time.process_time() - cpu

        try:
            # Warm-up opens the connections and fills the batcher's pipeline; not recorded.
            warm = list(range(concurrency if warmup is None else warmup))
            await asyncio.gather(*(worker(n, warm, False) for n in range(concurrency)))
            todo = list(range(requests))
            cpu0, srv0, t0 = time.process_time(), cpu_of() if cpu_of else 0.0, time.perf_counter()
            await asyncio.gather(*(worker(n, todo, True) for n in range(concurrency)))
            seconds = time.perf_counter() - t0 - paused[0]
            client_cpu = time.process_time() - cpu0 - paused[1]
            server_cpu = cpu_of() - srv0 if cpu_of else None
        finally:
            for conn in conns:
                conn.close()
    ms = [x * 1000 for x in latencies]
    good = requests - len(errors)
    return LoadResult(
        workload=workload,
        concurrency=concurrency,
        items_per_request=items_per_request,
        requests=requests,
        errors=len(errors),
        seconds=round(seconds, 3),
        items_per_s=round(good * items_per_request / seconds, 2),
        p50_ms=round(percentile(ms, 50), 2),
        p95_ms=round(percentile(ms, 95), 2),
        p99_ms=round(percentile(ms, 99), 2),
        client_cpu_s=round(client_cpu, 2),
        server_cpu_s=None if server_cpu is None else round(server_cpu, 2),
        error_samples=sorted(set(errors))[:5],
    )
