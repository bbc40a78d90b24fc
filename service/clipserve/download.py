"""Resumable, verified downloads of weight files into the cache, with progress.

Weights come from the operator's or the user's configuration, never from API clients, so the
SSRF guard of img_uri fetches does not apply (a model mirror on a private address is a normal
source). What does apply: http(s) only, a connect timeout and an idle-read timeout (no total
timeout: a 4 GB file on a slow link takes long, and a stall is caught by the idle timeout),
at most 5 redirects (the hub redirects to its CDN; httpx drops the Authorization header on a
redirect to another host), a size cap, and a free-space check before the first byte.

A file is written to `<dest>.part` and moved into place only once its size (and sha256 where
the source gives one) checks out, so a file at its final path is complete. A cut connection is
resumed with an HTTP Range request, within one run and across runs (`<dest>.part` stays).
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

CHUNK = 1 << 20
HEX64 = re.compile(r"[0-9a-f]{64}")
HEX40 = re.compile(r"[0-9a-f]{40}")
RETRY_STATUSES = {429, 500, 502, 503, 504}


class DownloadError(Exception):
    """A file could not be fetched or verified; the message names the file and the cause."""


@dataclass(frozen=True)
class Limits:
    """Timeouts, caps and retries for weight downloads."""

    connect_timeout_s: float = 10.0
    read_timeout_s: float = 60.0  # longest silence between two chunks
    max_bytes: int = 64 * 2**30  # the largest open_clip checkpoints are ~10 GB
    max_redirects: int = 5
    attempts: int = 6  # tries per file; each one resumes where the last stopped
    backoff_s: float = 1.0  # doubles after each failed try


@dataclass(frozen=True)
class RemoteFile:
    """One file to fetch: where from, where it lives once complete, what it must match."""

    label: str  # how progress lines and errors name it
    url: str
    dest: Path
    size: int | None = None
    sha256: str | None = None
    git_sha1: str | None = None  # the hub's etag of a file kept in git rather than LFS
    headers: Mapping[str, str] = field(default_factory=dict)

    @property
    def part(self) -> Path:
        """Where the bytes go until the file is complete and verified."""
        return self.dest.with_name(self.dest.name + ".part")


def client(limits: Limits) -> httpx.Client:
    """The HTTP client every download of one run shares."""
    timeout = httpx.Timeout(limits.read_timeout_s, connect=limits.connect_timeout_s)
    return httpx.Client(
        timeout=timeout,
        follow_redirects=True,
        max_redirects=limits.max_redirects,
        headers={"Accept-Encoding": "identity"},  # sizes and Range offsets are of the raw bytes
    )


class Progress:
    """Bytes done of the total over every file: a redrawn bar on a terminal, plain lines
    (`progress DONE/TOTAL bytes (P%) R MB/s`, which the operator reads) otherwise."""

    def __init__(
        self, total: int, *, out: IO[str] | None = None, bar: bool | None = None, every_s=2.0
    ) -> None:
        self.total = total
        self.done = 0
        self._out = out or sys.stderr
        self._bar = self._out.isatty() if bar is None else bar
        self._every_s = every_s
        self._start = self._last = time.monotonic()
        self._drawn = False
        self._expected: set[str] = set()

    def expect(self, key: str, n: int) -> None:
        """Add a file's size to the total once it is known (from its first response)."""
        if key not in self._expected:
            self._expected.add(key)
            self.total += n

    def add(self, n: int) -> None:
        """Count `n` more bytes (negative when a restarted file throws its part away)."""
        self.done += n
        now = time.monotonic()
        if now - self._last >= (0.2 if self._bar else self._every_s):
            self._last = now
            self._show()

    def say(self, text: str) -> None:
        """Print one message line (above the bar on a terminal)."""
        if self._drawn:
            self._out.write("\r\033[K")
            self._drawn = False
        self._out.write(text + "\n")
        self._out.flush()

    def finish(self) -> None:
        """Show the final count."""
        self._show()
        if self._drawn:
            self._out.write("\n")
            self._drawn = False
        self._out.flush()

    def _show(self) -> None:
        pct = 100.0 * self.done / self.total if self.total else 100.0
        rate = self.done / max(time.monotonic() - self._start, 1e-6) / 1e6
        if self._bar:
            filled = int(30 * pct / 100)
            self._out.write(
                f"\r[{'#' * filled}{'.' * (30 - filled)}] {pct:5.1f}% "
                f"{self.done / 1e6:,.1f}/{self.total / 1e6:,.1f} MB {rate:.1f} MB/s\033[K"
            )
            self._drawn = True
        else:
            self._out.write(
                f"progress {self.done}/{self.total} bytes ({pct:.0f}%) {rate:.1f} MB/s\n"
            )
        self._out.flush()


class _Retry(Exception):
    """The transfer stopped early (connection cut, stall); what arrived is kept for a resume."""


def fetch(http: httpx.Client, file: RemoteFile, progress: Progress, limits: Limits) -> bool:
    """Bring `file` to its destination unless it is there; True if bytes were fetched."""
    if file.dest.is_file():
        progress.add(file.dest.stat().st_size)
        return False
    file.dest.parent.mkdir(parents=True, exist_ok=True)
    delay = limits.backoff_s
    for attempt in range(1, limits.attempts + 1):
        try:
            _transfer(http, file, progress, limits)
            break
        except _Retry as exc:
            if attempt == limits.attempts:
                raise DownloadError(f"{file.label}: gave up after {attempt} tries ({exc})") from exc
            have = _size(file.part)
            progress.say(f"{file.label}: {exc}; resuming from byte {have} in {delay:g} s")
            time.sleep(delay)
            delay *= 2
    _verify(file)
    os.replace(file.part, file.dest)
    _validator_path(file).unlink(missing_ok=True)
    return True


def _transfer(http: httpx.Client, file: RemoteFile, progress: Progress, limits: Limits) -> None:
    have = _size(file.part)
    headers = dict(file.headers)
    if have:
        headers["Range"] = f"bytes={have}-"
        validator = _read_validator(file)
        if validator:  # the server sends the whole file again if it changed meanwhile
            headers["If-Range"] = validator
    progress.add(have)  # counted again below if the server restarts from zero
    try:
        with http.stream("GET", file.url, headers=headers) as resp:
            if resp.status_code == 416 and have and have in (file.size, _total(resp)):
                return  # the part was already complete (a previous run stopped before the move)
            if resp.status_code not in (200, 206):
                progress.add(-have)
                if resp.status_code in RETRY_STATUSES:  # busy or briefly down: try again
                    raise _Retry(f"{file.url} answered {_status(resp)}")
                raise DownloadError(f"{file.label}: {file.url} answered {_status(resp)}")
            if resp.status_code == 200 and have:
                progress.add(-have)  # no Range support, or the file changed: start again
                have = 0
            elif resp.status_code == 206 and not _range_starts_at(resp, have):
                progress.add(-have)
                raise DownloadError(
                    f"{file.label}: {file.url} answered a Range request for bytes {have}- with "
                    f"{resp.headers.get('Content-Range')!r}"
                )
            total = _total(resp)
            if file.size is None and total is not None:
                progress.expect(file.label, total)
            _check_size(file, total, limits)
            _check_space(file, (total or 0) - have)
            _write_validator(file, resp)
            with open(file.part, "ab" if have else "wb") as out:
                _stream_body(resp, out, file, have, progress, limits)
    except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
        progress.add(-_size(file.part))  # counted again from the part at the next try
        raise _Retry(_first_line(exc)) from exc
    except httpx.TooManyRedirects as exc:
        raise DownloadError(f"{file.label}: more than {limits.max_redirects} redirects") from exc
    except httpx.HTTPError as exc:
        raise DownloadError(f"{file.label}: {file.url}: {_first_line(exc)}") from exc


def _stream_body(
    resp: httpx.Response,
    out: IO[bytes],
    file: RemoteFile,
    have: int,
    progress: Progress,
    limits: Limits,
) -> None:
    for chunk in resp.iter_raw():  # as it arrives: a cut keeps every byte received
        have += len(chunk)
        if have > limits.max_bytes:
            raise DownloadError(f"{file.label}: larger than the {limits.max_bytes}-byte cap")
        try:
            out.write(chunk)
        except OSError as exc:
            if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                raise DownloadError(
                    f"{file.label}: no space left on {file.dest.parent} after {have - len(chunk)} "
                    "bytes"
                ) from exc
            raise
        progress.add(len(chunk))


def _verify(file: RemoteFile) -> None:
    """Size, then sha256 (or the hub's git blob sha1); a file that fails is removed."""
    size = _size(file.part)
    problem = None
    if file.size is not None and size != file.size:
        problem = f"{size} bytes arrived, the source said {file.size}"
    elif file.sha256 or file.git_sha1:
        got = _digest(file.part, git=file.sha256 is None)
        want = file.sha256 or file.git_sha1
        if got != want:
            kind = "sha256" if file.sha256 else "git sha1"
            problem = f"{kind} mismatch: expected {want}, got {got}"
    if problem:
        file.part.unlink(missing_ok=True)
        _validator_path(file).unlink(missing_ok=True)
        raise DownloadError(f"{file.label}: {problem} (partial file removed)")


def _digest(path: Path, *, git: bool) -> str:
    """sha256 of the file, or git's blob sha1 (`blob <size>\\0` + content) with `git`."""
    h = hashlib.sha1(b"blob %d\0" % _size(path)) if git else hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def _check_size(file: RemoteFile, total: int | None, limits: Limits) -> None:
    if total is not None and file.size is not None and total != file.size:
        raise DownloadError(f"{file.label}: {file.url} has {total} bytes, expected {file.size}")
    if (total or 0) > limits.max_bytes:
        raise DownloadError(
            f"{file.label}: {total} bytes is over the {limits.max_bytes}-byte cap for weights"
        )


def _check_space(file: RemoteFile, needed: int) -> None:
    free = shutil.disk_usage(file.dest.parent).free
    if needed > free:
        raise DownloadError(
            f"{file.label}: needs {needed} bytes, only {free} free on {file.dest.parent}"
        )


def _total(resp: httpx.Response) -> int | None:
    """The whole file's size, from Content-Range (206, 416) or Content-Length (200)."""
    if resp.status_code in (206, 416):
        total = resp.headers.get("Content-Range", "").rpartition("/")[2]
        return int(total) if total.isdigit() else None
    length = resp.headers.get("Content-Length", "")
    return int(length) if length.isdigit() else None


def _range_starts_at(resp: httpx.Response, start: int) -> bool:
    match = re.fullmatch(r"bytes (\d+)-\d+/(\d+|\*)", resp.headers.get("Content-Range", ""))
    return match is not None and int(match.group(1)) == start


def _validator_path(file: RemoteFile) -> Path:
    return file.part.with_name(file.part.name + ".etag")


def _read_validator(file: RemoteFile) -> str | None:
    try:
        return _validator_path(file).read_text().strip() or None
    except FileNotFoundError:
        return None


def _write_validator(file: RemoteFile, resp: httpx.Response) -> None:
    # A strong ETag (or Last-Modified) lets a resume ask for "the rest, if still the same file".
    etag = resp.headers.get("ETag", "")
    value = etag if etag and not etag.startswith("W/") else resp.headers.get("Last-Modified", "")
    _validator_path(file).write_text(value)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _status(resp: httpx.Response) -> str:
    return f"{resp.status_code} {resp.reason_phrase}".strip()


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
