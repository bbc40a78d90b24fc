"""A hub that cannot be reached stops `clipserve serve` with one message, not a traceback.

The real `clipserve serve --model ViT-B-32:openai` process runs with an empty cache (HF_HOME in a
temporary folder) and HF_ENDPOINT pointed at a host that does not resolve (`.invalid` never
does) or at a local port where nothing listens; no network is needed for either. TLS and HTTP
status failures come from a real local origin (tests/support/origin.py) standing in for the hub.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.origin import Origin, self_signed

SPEC = "ViT-B-32:openai"
FILE = "timm/vit_base_patch32_clip_224.openai/open_clip_model.safetensors"
WAYS_OUT = ("clipserve download", "--offline")


@pytest.fixture
def closed_port() -> Iterator[int]:
    """A local port that refuses connections: bound (so nobody else takes it), not listening."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


def clipserve(
    command: str, endpoint: str, home: Path, *args: str, spec: str = SPEC
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "CLIPSERVE_"))}
    env |= {"HF_HOME": str(home), "HF_ENDPOINT": endpoint}
    return subprocess.run(
        [sys.executable, "-m", "clipserve.cli", command, "--model", spec, *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
@pytest.mark.parametrize(
    ("spec", "named", "where", "cause"),
    [
        (SPEC, (FILE, "local checkpoint"), "hub.invalid", "does not resolve"),
        (SPEC, (FILE, "local checkpoint"), "127.0.0.1:{port}", "connection refused"),
        # random weights, but the tokenizer lives on the hub
        ("ViT-B-16-SigLIP:random", ("tokenizer timm/ViT-B-16-SigLIP",), "hub.invalid", "resolve"),
    ],
)
def test_an_unreachable_hub_is_one_message_naming_the_file_the_host_and_the_ways_out(
    tmp_path, closed_port, spec, named, where, cause
):
    host = where.format(port=closed_port)
    proc = clipserve("serve", f"http://{host}", tmp_path, "--port", "0", spec=spec)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "Traceback" not in out
    [failed] = [line for line in proc.stderr.splitlines() if line.startswith("clipserve: ")]
    for words in (spec, *named, host, cause, *WAYS_OUT):
        assert words in failed, (words, failed)


@pytest.mark.slow
def test_log_level_debug_shows_the_traceback_of_an_unreachable_hub(tmp_path):
    proc = clipserve("serve", "http://hub.invalid", tmp_path, "--port", "0", "--log-level", "debug")
    assert proc.returncode == 1
    assert "Traceback" in proc.stderr and "ConnectError: [Errno -2]" in proc.stderr


@pytest.mark.parametrize(
    ("tls", "busy", "cause"),
    [
        (True, 0, "TLS certificate verification failed"),
        (False, 1, "answered 503 Service Unavailable"),
    ],
)
def test_download_names_a_tls_or_status_failure_of_the_hub_without_a_traceback(
    tmp_path, tls, busy, cause
):
    with Origin(tls=self_signed(tmp_path) if tls else None) as hub:
        hub.add(f"/{FILE.rsplit('/', 1)[0]}/resolve/main/{FILE.rsplit('/', 1)[1]}", busy=busy)
        proc = clipserve("download", hub.base_url, tmp_path)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    for words in (SPEC, FILE, f"127.0.0.1:{hub.port}", cause):
        assert words in proc.stderr, (words, proc.stderr)
