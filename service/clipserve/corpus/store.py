"""Where a corpus is read from and its shards written to: a local folder or an S3-compatible
bucket, both through pyarrow's filesystems, behind the few operations `embed` needs.

Publishing is atomic on both: locally a file is written under a temporary name in the same
folder and renamed into place; on S3 one PUT is atomic (an object appears whole or not at all).
"""

from __future__ import annotations

import os
import uuid
from dataclasses import dataclass
from pathlib import Path

import pyarrow.fs as pafs

S3 = "s3://"


class Unreadable(Exception):
    """An input or output that cannot be used at all (missing, forbidden, wrong credentials,
    no such bucket): the run stops before any work, naming it."""


@dataclass(frozen=True)
class Store:
    """A folder: a local path or an S3 bucket/prefix; paths below it are `/`-separated."""

    fs: pafs.FileSystem
    root: str  # the folder in `fs`'s own terms (bucket/prefix for S3), no trailing slash
    url: str  # as the user wrote it, for messages
    local: bool

    def full(self, rel: str) -> str:
        """The path in `fs` of `rel` below the root."""
        return f"{self.root}/{rel}" if rel else self.root

    def shown(self, rel: str) -> str:
        """`rel` as the user would write it, for messages."""
        return f"{self.url.rstrip('/')}/{rel}" if rel else self.url

    def canonical(self, rel: str = "") -> str:
        """`rel` as an absolute local path or s3:// URL: the same however the user wrote it."""
        return self.full(rel) if self.local else S3 + self.full(rel)

    def check_bucket(self) -> None:
        """Fail now, naming it, when an S3 store's bucket does not exist or refuses us."""
        if self.local:
            return
        bucket = self.root.split("/", 1)[0]
        try:
            found = self.fs.get_file_info(bucket).type
        except OSError as exc:
            raise Unreadable(f"{self.url}: {_why(exc)}") from exc
        if found == pafs.FileType.NotFound:
            raise Unreadable(f"{self.url}: no such bucket {bucket!r}")

    def kind(self, rel: str = "") -> pafs.FileType:
        """What is at `rel` (NotFound when nothing)."""
        try:
            return self.fs.get_file_info(self.full(rel)).type
        except OSError as exc:
            raise Unreadable(f"{self.shown(rel)}: {_why(exc)}") from exc

    def files(self, under: str = "") -> list[str]:
        """Every file below `under`, recursively, relative to the root, sorted."""
        selector = pafs.FileSelector(self.full(under), recursive=True)
        try:
            infos = self.fs.get_file_info(selector)
        except OSError as exc:
            raise Unreadable(f"{self.shown(under)}: {_why(exc)}") from exc
        start = len(self.root) + 1
        return sorted(i.path[start:] for i in infos if i.type == pafs.FileType.File)

    def names(self, under: str) -> set[str]:
        """The file names directly in `under` (none when it does not exist yet)."""
        selector = pafs.FileSelector(self.full(under), allow_not_found=True)
        try:
            return {i.base_name for i in self.fs.get_file_info(selector) if i.type.name == "File"}
        except OSError as exc:
            raise Unreadable(f"{self.shown(under)}: {_why(exc)}") from exc

    def read(self, rel: str, limit: int | None = None) -> bytes:
        """The bytes of `rel` (the first `limit` of them when given)."""
        with self.fs.open_input_stream(self.full(rel)) as f:
            return bytes(f.read(limit) if limit is not None else f.read())

    def open(self, rel: str) -> pafs.NativeFile:
        """A seekable reader of `rel` (for tar and Parquet)."""
        return self.fs.open_input_file(self.full(rel))

    def publish(self, rel: str, data: bytes) -> None:
        """Write `data` to `rel` so that a reader sees all of it or nothing."""
        if not self.local:
            with self.fs.open_output_stream(self.full(rel)) as out:  # one PUT: atomic
                out.write(data)
            return
        final = Path(self.full(rel))
        final.parent.mkdir(parents=True, exist_ok=True)
        temp = final.with_name(f".{final.name}.{uuid.uuid4().hex[:8]}.tmp")
        try:
            with open(temp, "wb") as out:
                out.write(data)
                out.flush()
                os.fsync(out.fileno())  # on disk before the rename makes it visible
            os.replace(temp, final)
        except BaseException:
            temp.unlink(missing_ok=True)  # a full disk leaves no partial file behind
            raise

    def clear_temporaries(self, under: str) -> None:
        """Remove temporary files a killed run left in `under` (local only; S3 has none)."""
        if self.local and (folder := Path(self.full(under))).is_dir():
            for temp in folder.glob(".*.tmp"):
                temp.unlink(missing_ok=True)


def open_store(url: str, *, endpoint: str | None = None) -> Store:
    """A Store for a local path or `s3://bucket/prefix` (credentials from AWS_* variables)."""
    if not url.startswith(S3):
        path = Path(url).expanduser().absolute()
        return Store(pafs.LocalFileSystem(), path.as_posix().rstrip("/") or "/", url, True)
    root = url[len(S3) :].strip("/")
    if not root:
        raise Unreadable(f"{url}: name a bucket (s3://bucket/prefix)")
    return Store(s3_filesystem(endpoint), root, url, False)


def s3_filesystem(endpoint: str | None) -> pafs.S3FileSystem:
    """pyarrow's S3 client: the endpoint from --s3-endpoint or AWS_ENDPOINT_URL, credentials
    and region from the standard AWS_* variables (else the SDK's own chain)."""
    endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL") or None
    region = os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION")
    kwargs: dict[str, object] = {"allow_bucket_creation": False, "allow_bucket_deletion": False}
    if endpoint:
        scheme, sep, host = endpoint.partition("://")
        kwargs |= {
            "endpoint_override": host if sep else endpoint,
            "scheme": scheme if sep else "https",
        }
        # an S3-compatible store ignores the region, but the SDK must not go looking for one
        region = region or "us-east-1"
    if region:
        kwargs["region"] = region
    if key := os.environ.get("AWS_ACCESS_KEY_ID"):
        kwargs |= {
            "access_key": key,
            "secret_key": os.environ.get("AWS_SECRET_ACCESS_KEY", ""),
            "session_token": os.environ.get("AWS_SESSION_TOKEN") or None,
        }
    return pafs.S3FileSystem(**kwargs)


def _why(exc: OSError) -> str:
    """pyarrow's message without its C++ source locations."""
    text = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return text
