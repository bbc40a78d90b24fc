"""What a corpus holds: its items, cut into deterministic shards.

A folder of images is listed once, sorted, and shard k holds items [k*S, (k+1)*S); a list file
keeps its own row order; a WebDataset holds one output shard per input `.tar`. Reading an item's
bytes is deferred (`Item.load`) so that the runner reads many at once: on S3 each read is a
round trip.
"""

from __future__ import annotations

import tarfile
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pyarrow.fs as pafs

from clipserve.corpus.store import Store, Unreadable

IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "webp", "bmp", "gif", "tif", "tiff", "avif"})
LIST_EXTENSIONS = frozenset({"txt", "jsonl", "csv", "parquet"})
# First bytes of the formats the decoder accepts, for files named without an image extension.
_MAGIC = (b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"GIF87a", b"GIF89a", b"BM", b"II*\0", b"MM\0*")


@dataclass(frozen=True)
class Item:
    """One thing to embed: a text, image bytes (given or loaded on demand), or an image URL;
    or an item already known to have no vector (`error`)."""

    id: str
    text: str | None = None
    data: bytes | None = None
    load: Callable[[], bytes] | None = field(default=None, repr=False)
    url: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class Corpus:
    """The input cut into shards: `items(k)` yields shard k's items in order."""

    description: dict[str, Any]  # run.json's "input": what was read, and how
    shards: int
    total_items: int | None  # None for WebDataset: counting would read every .tar
    items: Callable[[int], Generator[Item, None, None]]  # read lazily: a shard may be gigabytes


def extension(name: str) -> str:
    """A file name's extension, lower case, without the dot."""
    return name.rsplit(".", 1)[-1].lower() if "." in name.rsplit("/", 1)[-1] else ""


def is_image_bytes(head: bytes) -> bool:
    """Whether these first bytes start an image of a format the decoder accepts."""
    return head.startswith(_MAGIC) or (head[:4] == b"RIFF" and head[8:12] == b"WEBP")


def reader(store: Store, rel: str) -> Callable[[], bytes]:
    """Reads one file of the store when called (in a worker thread)."""
    return lambda: store.read(rel)


def folder_of_images(store: Store, shard_size: int) -> Corpus:
    """Every image below the folder (by extension, or by its first bytes), sorted by path."""
    paths = []
    for rel in store.files():
        if any(part.startswith(".") for part in rel.split("/")):
            continue  # hidden files and folders (editor and OS leftovers, our own temporaries)
        ext = extension(rel)
        if ext in IMAGE_EXTENSIONS or (ext not in LIST_EXTENSIONS and _sniff(store, rel)):
            paths.append(rel)
    if not paths:
        raise Unreadable(f"{store.url}: no images found (by extension or content)")

    def items(k: int) -> Generator[Item, None, None]:
        for rel in paths[k * shard_size : (k + 1) * shard_size]:
            yield Item(rel, load=reader(store, rel))

    return Corpus(
        {"kind": "images", "url": store.canonical(), "files": len(paths)},
        -(-len(paths) // shard_size),
        len(paths),
        items,
    )


def webdataset(store: Store, tars: list[str]) -> Corpus:
    """WebDataset shards: one output shard per `.tar`, one item per sample (its image)."""

    def items(k: int) -> Generator[Item, None, None]:
        with store.open(tars[k]) as raw, tarfile.open(fileobj=raw, mode="r|*") as tar:
            yield from samples(tar)

    return Corpus(
        {"kind": "webdataset", "url": store.canonical(), "tars": tars}, len(tars), None, items
    )


def samples(tar: tarfile.TarFile) -> Iterator[Item]:
    """A streamed tar's samples: consecutive members sharing a key (the path up to the first
    dot of the file name), each as its first image member, or an error when it has none."""
    key: str | None = None
    image: bytes | None = None
    for member in tar:
        if not member.isfile():
            continue
        folder, _, name = member.name.rpartition("/")
        stem, _, ext = name.partition(".")
        this = f"{folder}/{stem}" if folder else stem
        if this != key:
            if key is not None:
                yield _sample(key, image)
            key, image = this, None
        if image is None and ext.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS:
            fh = tar.extractfile(member)
            image = fh.read() if fh is not None else b""
    if key is not None:
        yield _sample(key, image)


def _sample(key: str, image: bytes | None) -> Item:
    if image is None:
        return Item(key, error="sample has no image member (.jpg, .png, .webp, ...)")
    return Item(key, data=image)


def _sniff(store: Store, rel: str) -> bool:
    try:
        return is_image_bytes(store.read(rel, 16))
    except OSError:
        return False  # unreadable and not named as an image: not an item


def is_dir(store: Store) -> bool:
    """Whether the store's root is a folder (an S3 prefix with objects under it counts)."""
    return store.kind() == pafs.FileType.Directory
