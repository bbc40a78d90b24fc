"""Several writers of one cache file: real `clipserve download` processes on one cache.

The origin (tests/support/origin.py) is a real local HTTP server that honours Range and sends
the checkpoint in small, throttled pieces; `meet=2` makes each answer pause after its first piece
until the second process's request has arrived, so the two transfers overlap whatever the
processes' start-up takes. The second process starts its download only once the first one's part
file holds bytes: the moment the old fixed `.part` name let it resume from the first one's
half-written bytes and append beside it. The two processes run `clipserve download` once per
round, each time its command line arrives on stdin: importing torch takes tens of seconds on a
busy 2-core machine, the rounds themselves about a second.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from clipserve.sources import weights
from clipserve.sources.download import Limits

from tests.support.origin import Origin
from tests.support.server import MODEL_CONFIGS

ARCH = "Tiny-ViT-T"
DATA = os.urandom(2 * 2**20)
SHA = hashlib.sha256(DATA).hexdigest()
ETAG = f'"{SHA[:16]}"'
ROUNDS = 8


@pytest.fixture
def origin() -> Iterator[Origin]:
    with Origin() as o:
        yield o


# Runs `clipserve download` (the CLI's own entry point) for each JSON argument list read from
# stdin, and says `exit <code>` on stdout after each.
WRITER = """
import json, sys
import clipserve.models, clipserve.sources.weights
from clipserve import cli
for line in sys.stdin:
    code = cli.main(["download", *json.loads(line)])
    print(f"exit {code}", flush=True)
"""


class Writer:
    """One `clipserve download` process, given one command line per round."""

    def __init__(self, log: Path) -> None:
        self.log = log
        with open(log, "w") as err:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", WRITER], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                stderr=err, text=True,
            )  # fmt: skip

    def start(self, url: str, cache: Path) -> Writer:
        """Begin `clipserve download --model ARCH:url --cache-dir cache`."""
        args = ["--model", f"{ARCH}:{url}", "--cache-dir", str(cache)]
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps([*args, "--model-config-dir", str(MODEL_CONFIGS)]) + "\n")
        self.proc.stdin.flush()
        return self

    def result(self) -> tuple[int, list[str]]:
        """The exit code of the download begun last, and what it printed."""
        assert self.proc.stdout is not None
        said = []
        for line in self.proc.stdout:
            if line.startswith("exit "):
                return int(line.split()[1]), said
            said.append(line)
        raise AssertionError(f"the writer died: {self.log.read_text()}")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def close(self) -> None:
        if self.alive():
            self.proc.kill()
        self.proc.wait()


@pytest.fixture
def writers(tmp_path) -> Iterator[tuple[Writer, Writer]]:
    pair = Writer(tmp_path / "a.log"), Writer(tmp_path / "b.log")
    yield pair
    for w in pair:
        w.close()


def parts_in(cache: Path) -> list[Path]:
    return sorted(cache.rglob("*.part*"))


def wait_for_bytes_in_a_part(cache: Path, writer: Writer) -> int:
    """Poll until the writer's part file holds bytes; their count."""
    deadline = time.monotonic() + 600  # start-up on a loaded machine; measures nothing
    while time.monotonic() < deadline:
        sizes = [p.stat().st_size for p in parts_in(cache) if not p.name.endswith(".etag")]
        if any(sizes):
            return max(sizes)
        assert writer.alive(), writer.log.read_text()
        time.sleep(0.05)
    raise AssertionError("the first writer never wrote a byte")


@pytest.mark.slow
def test_two_downloads_of_one_file_into_one_cache_publish_the_source_bytes(
    tmp_path, origin, writers
):
    for i in range(ROUNDS):
        first, second = writers if i % 2 else writers[::-1]
        path, cache = f"/w/{i}/tiny.pt", tmp_path / str(i)
        url = origin.add(
            path, DATA, ranges=True, headers={"ETag": ETAG}, chunk_size=64 * 1024,
            chunk_delay_s=0.01, meet=2,
        )  # fmt: skip
        tag = f"{url}#sha256={SHA}" if i % 2 else url  # unpinned: only a size to check
        wait_for_bytes_in_a_part(cache, first.start(tag, cache))
        second.start(tag, cache)
        results = first.result(), second.result()
        published = weights.cached(weights.parse_url(tag), str(cache))
        assert published is not None and hashlib.sha256(published.read_bytes()).hexdigest() == SHA
        for code, said in results:
            assert code == 0, (i, said, first.log.read_text(), second.log.read_text())
        assert parts_in(cache) == []
        asked = [r.headers for r in origin.requests if r.path == path and r.method == "GET"]
        assert len(asked) == 2 and not any("Range" in h for h in asked)  # no live part adopted


@pytest.mark.slow
def test_a_killed_writers_part_is_resumed_by_the_next_run(tmp_path, origin, writers):
    url = origin.add("/w/tiny.pt", DATA, ranges=True, headers={"ETag": ETAG}, meet=2)
    first, second = writers
    cache = tmp_path / "cache"
    have = wait_for_bytes_in_a_part(cache, first.start(url, cache))
    first.proc.send_signal(signal.SIGKILL)
    first.proc.wait()
    code, said = second.start(url, cache).result()
    assert code == 0, (said, second.log.read_text())
    _, resumed = [r.headers for r in origin.requests if r.method == "GET"]
    assert resumed["Range"] == f"bytes={have}-" and resumed["If-Range"] == ETAG
    published = weights.cached(weights.parse_url(url), str(cache))
    assert published is not None and published.read_bytes() == DATA
    assert parts_in(cache) == []


def foreign_part(dest: Path, data: bytes, *, age_s: float) -> Path:
    """The part a writer on another machine left (its mtime `age_s` ago, on this volume)."""
    dest.parent.mkdir(parents=True)
    part = dest.with_name(f"{dest.name}.part.{'0' * 12}.7.cafe0123")
    part.write_bytes(data)
    part.with_name(part.name + ".etag").write_text(ETAG)
    then = time.time() - age_s
    os.utime(part, (then, then))
    return part


def test_another_machines_part_is_adopted_once_stale_and_left_alone_while_fresh(tmp_path, origin):
    url = origin.add("/w/tiny.pt", DATA, ranges=True, headers={"ETag": ETAG})
    src = weights.parse_url(url)
    limits = Limits(backoff_s=0.01, stale_part_s=600)
    stale = foreign_part(weights.url_path(src, str(tmp_path / "a")), DATA[:50_000], age_s=3600)
    weights.download([("t", src)], str(tmp_path / "a"), limits=limits, out=io.StringIO())
    assert origin.requests[-1].headers["Range"] == "bytes=50000-"
    assert weights.cached(src, str(tmp_path / "a")).read_bytes() == DATA
    assert not stale.exists()
    fresh = foreign_part(weights.url_path(src, str(tmp_path / "b")), DATA[:50_000], age_s=0)
    weights.download([("t", src)], str(tmp_path / "b"), limits=limits, out=io.StringIO())
    assert "Range" not in origin.requests[-1].headers
    assert weights.cached(src, str(tmp_path / "b")).read_bytes() == DATA
    assert fresh.stat().st_size == 50_000  # its writer may still be at work
