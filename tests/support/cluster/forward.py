"""`python -m tests.support.cluster.forward LISTEN:PORT TARGET:PORT`: a plain TCP forwarder.

The API server of the local control plane listens on 127.0.0.1 (started before any real node
exists, beside other sessions' clusters); pods reach it through the `kubernetes` Service, whose
endpoint is this forwarder on the node IP. TLS passes through untouched, end to end, as through
a load balancer in front of a real control plane.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys


async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, asyncio.CancelledError):
        pass
    finally:
        with contextlib.suppress(Exception):
            writer.close()


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host, int(port)


async def serve(listen: str, target: str) -> None:
    """Forward every connection to listen onto a new connection to target, until SIGTERM."""
    target_host, target_port = _split(target)

    async def handle(client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            upstream_r, upstream_w = await asyncio.open_connection(target_host, target_port)
        except OSError:
            client_w.close()
            return
        await asyncio.gather(_pipe(client_r, upstream_w), _pipe(upstream_r, client_w))

    host, port = _split(listen)
    server = await asyncio.start_server(handle, host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with server:
        await stop.wait()


def main(argv: list[str]) -> int:
    """Parse LISTEN TARGET and forward until a signal."""
    if len(argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    asyncio.run(serve(argv[0], argv[1]))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
