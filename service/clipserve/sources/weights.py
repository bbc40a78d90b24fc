"""Where a model's weight files come from and where they live in the cache.

Two kinds of remote source: files of a Hugging Face hub repo (an open_clip pretrained tag, or
`hf-hub:org/repo`), kept in the hub's own cache layout so that open_clip and huggingface_hub
find them; and an http(s) URL (optionally `#sha256=<hex>`), kept under
`<cache>/clipserve-urls/<hash of the URL and its pin>/<file name>`: the pin is part of the key,
so a new pin after the file changed upstream fetches the new file, and files of two pins of one
URL live side by side. The cache root is `--cache-dir`, else the hub's default cache. `ensure`
gives `serve` a file (from the cache, else downloaded unless offline); `download` fills the
cache for `clipserve download`.

A file in the cache is verified before it is used, against what is known without the network:
a URL's pin, a hub blob's name (the hub names a blob by its sha256, or git's sha1 for a small
file). One that fails is fetched again, or refused with the reason when offline.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from urllib.parse import unquote, urlsplit

from huggingface_hub import constants, get_hf_file_metadata, hf_hub_url, try_to_load_from_cache
from huggingface_hub.errors import EntryNotFoundError
from huggingface_hub.utils import build_hf_headers

from clipserve.sources.download import (
    HEX40,
    HEX64,
    DownloadError,
    Limits,
    RemoteFile,
    client,
    fetch,
    problem,
)
from clipserve.sources.http_failures import host_of, is_request_failure, reason
from clipserve.sources.progress import Progress

log = logging.getLogger(__name__)

URL_FOLDER = "clipserve-urls"
DEFAULT_LIMITS = Limits()
WEIGHT_SUFFIXES = (".safetensors", ".pt", ".pth", ".bin")  # a folder's file, best first


class WeightsMissing(Exception):
    """A weights file is not in the cache and may not be downloaded (--offline)."""


@dataclass(frozen=True)
class HubFile:
    """One file of a hub repo; `names` are alternatives, best first (safetensors, then .bin)."""

    repo: str
    names: tuple[str, ...]
    revision: str = "main"


@dataclass(frozen=True)
class UrlFile:
    """A checkpoint at an http(s) URL, with the sha256 the URL's `#sha256=` fragment gave."""

    url: str
    sha256: str | None = None


Source = HubFile | UrlFile


def parse_url(tag: str) -> UrlFile:
    """`https://host/ckpt.pt[#sha256=<64 hex>]`; raise ValueError naming what is wrong."""
    url, _, fragment = tag.partition("#")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{tag!r} is not an http(s) URL with a host")
    sha256 = None
    if fragment:
        key, _, value = fragment.partition("=")
        if key != "sha256" or not HEX64.fullmatch(value.lower()):
            raise ValueError(
                f"{tag!r}: the URL fragment must be #sha256=<64 hex digits>, not #{fragment}"
            )
        sha256 = value.lower()
    return UrlFile(url=url, sha256=sha256)


def cache_root(cache_dir: str | None) -> Path:
    """The cache folder: `--cache-dir`, else the hub's default cache (HF_HUB_CACHE)."""
    return Path(cache_dir).expanduser() if cache_dir else Path(constants.HF_HUB_CACHE)


def url_path(src: UrlFile, cache_dir: str | None) -> Path:
    """Where a URL's file lives once downloaded (the same place for the same URL and pin)."""
    tag = f"{src.url}#sha256={src.sha256}" if src.sha256 else src.url
    key = hashlib.sha256(tag.encode()).hexdigest()[:16]
    name = re.sub(r"[^A-Za-z0-9._-]", "_", unquote(urlsplit(src.url).path).rsplit("/", 1)[-1])
    return cache_root(cache_dir) / URL_FOLDER / key / (name.lstrip(".") or "checkpoint")


def weights_in_folder(folder: Path) -> Path:
    """The one weights file in a folder (e.g. a mounted model image); raise naming the choice."""
    found = sorted(p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES and p.is_file())
    if len(found) != 1:
        what = ", ".join(p.name for p in found) if found else "none"
        raise WeightsMissing(
            f"{folder} must hold exactly one weights file ({'/'.join(WEIGHT_SUFFIXES)}), found "
            f"{what}; name the file in the spec instead"
        )
    return found[0]


def cached(src: Source, cache_dir: str | None) -> Path | None:
    """The source's file if it is in the cache and verified; no network."""
    path = _lookup(src, cache_dir)
    return path if path is not None and _problem(src, path) is None else None


def _lookup(src: Source, cache_dir: str | None) -> Path | None:
    """The source's file in the cache, unverified."""
    if isinstance(src, UrlFile):
        path = url_path(src, cache_dir)
        if src.sha256 and not path.is_file():
            # filled before the pin was part of the key; the pin still decides (_problem)
            path = url_path(UrlFile(src.url), cache_dir)
        return path if path.is_file() else None
    for name in src.names:
        hit = try_to_load_from_cache(
            src.repo, name, cache_dir=cache_root(cache_dir), revision=src.revision
        )
        if isinstance(hit, str):
            return Path(hit)
    return None


def _problem(src: Source, path: Path) -> str | None:
    """Why a cached file is not the source's: its pin, or the hash its hub blob is named by."""
    if isinstance(src, UrlFile):
        return problem(path, sha256=src.sha256)
    etag = path.resolve().name
    return problem(
        path,
        sha256=etag if HEX64.fullmatch(etag) else None,
        git_sha1=etag if HEX40.fullmatch(etag) else None,
    )


def describe(src: Source) -> str:
    """How messages name a source."""
    if isinstance(src, UrlFile):
        return src.url
    return f"{src.repo}/{' or '.join(src.names)} (hub)"


def ensure(
    label: str,
    src: Source,
    cache_dir: str | None,
    *,
    offline: bool,
    limits: Limits = DEFAULT_LIMITS,
) -> Path:
    """The source's file for `serve`: from the cache, else downloaded (refused when offline)."""
    path = _lookup(src, cache_dir)
    wrong = _problem(src, path) if path is not None else None
    if path is not None and wrong is None:
        return path
    if offline and wrong:
        raise WeightsMissing(
            f"{label}: {describe(src)} in the cache {cache_root(cache_dir)} is not the right "
            f"file ({wrong}) and --offline forbids fetching it again (run `clipserve download`)"
        )
    if offline:
        raise WeightsMissing(
            f"{label}: {describe(src)} is not in the cache {cache_root(cache_dir)} and --offline "
            "forbids downloading it (fill the cache with `clipserve download`)"
        )
    download([(label, src)], cache_dir, limits=limits)
    path = _lookup(src, cache_dir)
    assert path is not None, "a completed download is in the cache"
    return path


@dataclass
class Report:
    """What `download` did."""

    fetched: list[str] = field(default_factory=list)
    cached: list[str] = field(default_factory=list)
    bytes: int = 0
    seconds: float = 0.0


@dataclass(frozen=True)
class _HubLink:
    """What makes a downloaded blob visible under the hub's cache layout."""

    repo_dir: Path
    revision: str
    commit: str
    name: str


def download(
    sources: list[tuple[str, Source]],
    cache_dir: str | None,
    *,
    limits: Limits = DEFAULT_LIMITS,
    out: IO[str] | None = None,
    bar: bool | None = None,
) -> Report:
    """Fetch every source not yet in the cache; raise DownloadError on the first failure."""
    start = time.monotonic()
    report = Report()
    todo: list[tuple[RemoteFile, _HubLink | None]] = []
    for label, src in sources:
        if cached(src, cache_dir) is not None:
            report.cached.append(label)
        else:
            todo.append(_plan(label, src, cache_dir, limits))
    progress = Progress(sum(f.size or 0 for f, _ in todo), out=out, bar=bar)
    with client(limits) as http:
        for remote, link in todo:
            progress.say(f"fetching {remote.label}")
            fetch(http, remote, progress, limits)
            if link is not None:
                _link_blob(remote.dest, link)
            report.fetched.append(remote.label)
    progress.finish()
    report.bytes = progress.done
    report.seconds = time.monotonic() - start
    return report


def _plan(
    label: str, src: Source, cache_dir: str | None, limits: Limits
) -> tuple[RemoteFile, _HubLink | None]:
    if isinstance(src, UrlFile):
        dest = url_path(src, cache_dir)
        return RemoteFile(label=label, url=src.url, dest=dest, sha256=src.sha256), None
    repo_dir = cache_root(cache_dir) / f"models--{src.repo.replace('/', '--')}"
    for name in src.names:
        url = hf_hub_url(src.repo, name, revision=src.revision)
        try:
            meta = get_hf_file_metadata(url, timeout=limits.connect_timeout_s)
        except Exception as exc:  # whatever HTTP library the hub client uses this year
            if isinstance(exc, EntryNotFoundError) or reason(exc).startswith("answered 404"):
                continue  # try the next alternative (a mirror may not say "EntryNotFound")
            if not is_request_failure(exc):
                raise
            raise DownloadError(
                f"{label}: could not fetch {src.repo}/{name} from {host_of(url)}: {reason(exc)}"
            ) from exc
        if not meta.etag or not meta.commit_hash:
            raise DownloadError(f"{label}: the hub gave no etag or commit for {src.repo}/{name}")
        remote = RemoteFile(
            label=f"{label} {src.repo}/{name}",
            url=url,
            dest=repo_dir / "blobs" / meta.etag,
            size=meta.size,
            sha256=meta.etag if HEX64.fullmatch(meta.etag) else None,
            git_sha1=meta.etag if HEX40.fullmatch(meta.etag) else None,
            headers=build_hf_headers(),
        )
        return remote, _HubLink(repo_dir, src.revision, meta.commit_hash, name)
    raise DownloadError(f"{label}: the hub repo {src.repo} has none of {', '.join(src.names)}")


def _link_blob(blob: Path, link: _HubLink) -> None:
    """snapshots/<commit>/<name> -> ../../blobs/<etag> and refs/<revision>, as the hub does."""
    pointer = link.repo_dir / "snapshots" / link.commit / link.name
    pointer.parent.mkdir(parents=True, exist_ok=True)
    target = os.path.relpath(blob, pointer.parent)
    tmp = pointer.with_name(pointer.name + ".link")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target)
    os.replace(tmp, pointer)
    if link.revision != link.commit:
        ref = link.repo_dir / "refs" / link.revision
        ref.parent.mkdir(parents=True, exist_ok=True)
        ref.write_text(link.commit)
