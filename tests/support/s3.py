"""A real S3-API server for the tests: S3Proxy (scripts/install-s3proxy.sh) on a free loopback
port, objects as files in a temporary folder, SigV4 authentication with one key pair."""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

from tests.support.polling import eventually
from tests.support.rendering import install_tool
from tests.support.server import free_port

KEY, SECRET = "clipserve-test", "clipserve-test-secret"


@dataclass(frozen=True)
class S3:
    """A running S3Proxy: its endpoint and the environment a client needs to reach it."""

    endpoint: str  # http://127.0.0.1:PORT
    data: Path  # its storage: a bucket is a folder here

    def env(self, secret: str = SECRET) -> dict[str, str]:
        """AWS_* variables for this server (a wrong `secret` to test refusal)."""
        return {
            "AWS_ACCESS_KEY_ID": KEY,
            "AWS_SECRET_ACCESS_KEY": secret,
            "AWS_ENDPOINT_URL": self.endpoint,
            "AWS_REGION": "us-east-1",
        }

    def bucket(self, name: str) -> str:
        """Create an empty bucket (the filesystem backend's bucket is a folder)."""
        (self.data / name).mkdir()
        return name

    def filesystem(self) -> pafs.S3FileSystem:
        """A pyarrow client with the right credentials."""
        return pafs.S3FileSystem(
            access_key=KEY,
            secret_key=SECRET,
            endpoint_override=self.endpoint.removeprefix("http://"),
            scheme="http",
            region="us-east-1",
        )


@contextmanager
def running_s3(folder: Path) -> Iterator[S3]:
    """S3Proxy serving `folder`, until the block ends."""
    jar = install_tool("install-s3proxy.sh")
    port = free_port()
    data = folder / "data"
    data.mkdir()
    props = folder / "s3proxy.properties"
    props.write_text(
        f"s3proxy.endpoint=http://127.0.0.1:{port}\n"
        "s3proxy.authorization=aws-v2-or-v4\n"
        f"s3proxy.identity={KEY}\ns3proxy.credential={SECRET}\n"
        f"jclouds.provider=filesystem\njclouds.filesystem.basedir={data}\n"
    )
    log = (folder / "s3proxy.log").open("w")
    proc = subprocess.Popen(
        ["java", "-jar", jar, "--properties", str(props)], stdout=log, stderr=subprocess.STDOUT
    )
    try:
        eventually(
            lambda: socket.create_connection(("127.0.0.1", port), timeout=1).close() or True,
            "S3Proxy listening",
            timeout_s=60,
            every_s=0.2,
            not_yet=(OSError,),
        )
        yield S3(f"http://127.0.0.1:{port}", data)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        log.close()
