"""Resumable, verified downloads of weight files into the cache.

Weights come from the operator's or the user's configuration, never from API clients, so the
SSRF guard of img_uri fetches does not apply (a model mirror on a private address is a normal
source). What does apply: http(s) only, a connect timeout and an idle-read timeout (no total
timeout: a 4 GB file on a slow link takes long, and a stall is caught by the idle timeout),
at most 5 redirects (the hub redirects to its CDN; httpx drops the Authorization header on a
redirect to another host) and none from https to http, a size cap, and a free-space check
before the first byte.

Each process writes a part file of its own (parts.py) and moves it into place with one atomic
rename once its size (the source's, else the server's) and sha256 (where known) check out, so a
file at its final path is one writer's complete bytes even with several writers on one shared
volume; the first verified copy wins. A file already at its final path is verified the same way
before it is trusted. A cut connection is resumed with an HTTP Range request, within one run and
across runs (the part of a writer that is gone is adopted). A body that has no length and ends
when the connection closes is refused unless a sha256 can verify it (a cut looks like its end).
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

from clipserve.sources import parts
from clipserve.sources.http_failures import first_line, host_of, reason
from clipserve.sources.progress import Progress

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
    # A part nobody has written for this long has lost its writer and may be adopted: well
    # over a live writer's longest silence (a read timeout, a backoff, a hash) and NFS's
    # attribute caching (60 s).
    stale_part_s: float = 600.0


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


def client(limits: Limits) -> httpx.Client:
    """The HTTP client every download of one run shares."""
    timeout = httpx.Timeout(limits.read_timeout_s, connect=limits.connect_timeout_s)
    return httpx.Client(
        timeout=timeout,
        follow_redirects=True,
        max_redirects=limits.max_redirects,
        headers={"Accept-Encoding": "identity"},  # sizes and Range offsets are of the raw bytes
        event_hooks={"response": [_refuse_downgrade]},  # called on every hop of a redirect
    )


def problem(
    path: Path, *, size: int | None = None, sha256: str | None = None, git_sha1: str | None = None
) -> str | None:
    """Why the file at `path` is not the one expected (size, then sha256 or git's blob sha1);
    None when it is, or when nothing is known to check it against."""
    got_size = _size(path)
    if size is not None and got_size != size:
        return f"{got_size} bytes, expected {size}"
    want = sha256 or git_sha1
    if want:
        got = _digest(path, git=sha256 is None)
        if got != want:
            return f"{'sha256' if sha256 else 'git sha1'} mismatch: expected {want}, got {got}"
    return None


class _Retry(Exception):
    """The transfer stopped early (connection cut, stall); what arrived is kept for a resume."""


class _Downgrade(Exception):
    """A redirect from https to plain http."""


def fetch(http: httpx.Client, file: RemoteFile, progress: Progress, limits: Limits) -> bool:
    """Bring `file` to its destination unless a verified copy is there; True if bytes were
    fetched."""
    if file.dest.is_file():
        wrong = _problem(file, file.dest)
        if wrong is None:
            progress.add(_size(file.dest))
            return False
        progress.say(f"{file.label}: the copy in the cache is not intact ({wrong}); fetching again")
    file.dest.parent.mkdir(parents=True, exist_ok=True)
    part = parts.claim(file.dest, limits.stale_part_s)
    try:
        total = _fill(http, file, part, progress, limits)
        wrong = _problem(file, part, total)
        if wrong:
            parts.discard(part)
            raise DownloadError(f"{file.label}: {wrong} (partial file removed)")
    except DownloadError:
        if not _size(part):
            parts.discard(part)  # nothing to resume
        raise
    if file.dest.is_file() and _problem(file, file.dest, total) is None:
        parts.discard(part)  # another writer's verified copy got there first
    else:
        os.replace(part, file.dest)
        parts.validator_of(part).unlink(missing_ok=True)
    parts.sweep(file.dest, limits.stale_part_s)
    return True


def _fill(
    http: httpx.Client, file: RemoteFile, part: Path, progress: Progress, limits: Limits
) -> int | None:
    """Bring the part to the whole file, resuming after each cut; the size the server gave."""
    delay = limits.backoff_s
    attempt = 1
    while True:
        try:
            return _transfer(http, file, part, progress, limits)
        except _Retry as exc:
            if attempt == limits.attempts:
                raise DownloadError(
                    f"{file.label}: gave up after {attempt} tries ({host_of(file.url)}: {exc})"
                ) from exc
            progress.say(f"{file.label}: {exc}; resuming from byte {_size(part)} in {delay:g} s")
            time.sleep(delay)
            delay *= 2
            attempt += 1


def _transfer(
    http: httpx.Client, file: RemoteFile, part: Path, progress: Progress, limits: Limits
) -> int | None:
    have = _size(part)
    headers = dict(file.headers)
    if have:
        headers["Range"] = f"bytes={have}-"
        validator = _read_validator(part)
        if validator:  # the server sends the whole file again if it changed meanwhile
            headers["If-Range"] = validator
    progress.add(have)  # counted again below if the server restarts from zero
    try:
        with http.stream("GET", file.url, headers=headers) as resp:
            if resp.status_code == 416 and have:
                return _past_the_end(file, part, have, resp, progress)
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
            _check_framing(file, resp, total)
            _check_space(file, (total or 0) - have)
            _write_validator(part, resp)
            with open(part, "ab" if have else "wb") as out:
                _stream_body(resp, out, file, have, progress, limits)
            return total
    except (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError) as exc:
        progress.add(-_size(part))  # counted again from the part at the next try
        raise _Retry(reason(exc)) from exc
    except _Downgrade as exc:
        raise DownloadError(f"{file.label}: {exc}") from exc
    except httpx.TooManyRedirects as exc:
        raise DownloadError(f"{file.label}: more than {limits.max_redirects} redirects") from exc
    except httpx.HTTPError as exc:
        raise DownloadError(f"{file.label}: {file.url}: {first_line(exc)}") from exc


def _past_the_end(
    file: RemoteFile, part: Path, have: int, resp: httpx.Response, progress: Progress
) -> int | None:
    """A 416 to `Range: bytes=<have>-`: the part is complete (a try stopped before the move),
    or longer than the remote file (which changed): then it is thrown away and fetched again."""
    total = _total(resp)
    if have == (file.size if file.size is not None else total):
        return total
    progress.add(-have)
    with open(part, "wb"):  # emptied, still ours
        pass
    parts.validator_of(part).unlink(missing_ok=True)
    raise _Retry(
        f"the partial file ({have} bytes) is longer than {file.url} "
        f"({total if total is not None else 'unknown'} bytes); starting again"
    )


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


def _problem(file: RemoteFile, path: Path, total: int | None = None) -> str | None:
    """`problem` against what the source says, else the size the server gave (`total`)."""
    size = file.size if file.size is not None else total
    return problem(path, size=size, sha256=file.sha256, git_sha1=file.git_sha1)


def _digest(path: Path, *, git: bool) -> str:
    """sha256 of the file, or git's blob sha1 (`blob <size>\\0` + content) with `git`."""
    h = hashlib.sha1(b"blob %d\0" % _size(path)) if git else hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(CHUNK):
            h.update(block)
    return h.hexdigest()


def _refuse_downgrade(resp: httpx.Response) -> None:
    """A response hook: an https URL that redirects to http would hand the rest of the way,
    and the weights, to anyone on the path."""
    if resp.has_redirect_location and resp.request.url.scheme == "https":
        target = resp.request.url.join(resp.headers["Location"])
        if target.scheme != "https":
            raise _Downgrade(
                f"{resp.request.url.host} redirected from https to {target.scheme} "
                f"({target.host}); a download never leaves https"
            )


def _check_size(file: RemoteFile, total: int | None, limits: Limits) -> None:
    if total is not None and file.size is not None and total != file.size:
        raise DownloadError(f"{file.label}: {file.url} has {total} bytes, expected {file.size}")
    if (total or 0) > limits.max_bytes:
        raise DownloadError(
            f"{file.label}: {total} bytes is over the {limits.max_bytes}-byte cap for weights"
        )


def _check_framing(file: RemoteFile, resp: httpx.Response, total: int | None) -> None:
    """A body with neither a length nor chunked framing ends when the connection closes, so a
    cut looks like its end: accepted only when the whole file's size (checked at the end) or a
    sha256 (or the hub's sha1) can tell."""
    chunked = "chunked" in resp.headers.get("Transfer-Encoding", "").lower()
    delimited = chunked or "Content-Length" in resp.headers
    checkable = total is not None or file.size is not None or file.sha256 or file.git_sha1
    if not delimited and not checkable:
        raise DownloadError(
            f"{file.label}: {host_of(file.url)} sends {file.url} with neither its length nor "
            "chunked framing, so a cut connection cannot be told from the end of the file; "
            "pin its content with #sha256=<64 hex digits> to accept it"
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


def _read_validator(part: Path) -> str | None:
    try:
        return parts.validator_of(part).read_text().strip() or None
    except FileNotFoundError:
        return None


def _write_validator(part: Path, resp: httpx.Response) -> None:
    # A strong ETag (or Last-Modified) lets a resume ask for "the rest, if still the same file".
    etag = resp.headers.get("ETag", "")
    value = etag if etag and not etag.startswith("W/") else resp.headers.get("Last-Modified", "")
    parts.validator_of(part).write_text(value)


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except FileNotFoundError:
        return 0


def _status(resp: httpx.Response) -> str:
    return f"{resp.status_code} {resp.reason_phrase}".strip()
