"""List files: `.txt` (a line per item), `.jsonl`, `.csv` and `.parquet` (a row per item, with
an id column and a text or image column). Rows keep the file's order."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Generator
from dataclasses import dataclass
from typing import Any

import pyarrow.parquet as pq

from clipserve.corpus.items import Corpus, Item, extension
from clipserve.corpus.store import S3, Store, Unreadable


@dataclass(frozen=True)
class Columns:
    """What the user named: the id column, and a text or an image column (or neither)."""

    id: str | None = None
    text: str | None = None
    image: str | None = None
    lines: str = "texts"  # what a .txt file's lines are: texts or images


def list_file(store: Store, rel: str, columns: Columns, shard_size: int) -> Corpus:
    """The items of one list file; a column that is not there stops the run, naming it."""
    shown = store.shown(rel)
    try:
        data = store.read(rel) if extension(rel) != "parquet" else b""
        ids, values, modality, column, id_column = _rows(store, rel, data, columns, shown)
    except OSError as exc:
        raise Unreadable(f"{shown}: {exc}") from exc
    folder = rel.rpartition("/")[0]

    def items(k: int) -> Generator[Item, None, None]:
        part = slice(k * shard_size, (k + 1) * shard_size)
        for row, (id_, value) in enumerate(zip(ids[part], values[part], strict=True)):
            if id_ is None:  # a row without an id (or a line that is not JSON) still has a row
                yield Item("", error=f"row {k * shard_size + row + 1}: no {id_column!r}")
            else:
                yield _item(store, folder, id_, value, modality)

    description = {"kind": "list", "url": store.canonical(rel), "rows": len(ids), modality: column}
    return Corpus(description, -(-len(ids) // shard_size), len(ids), items)


def _rows(
    store: Store, rel: str, data: bytes, c: Columns, shown: str
) -> tuple[list[str | None], list[Any], str, str, str]:
    """(ids, values, "text" or "image", the value's column, the id column) of a list file."""
    ext = extension(rel)
    if ext == "txt":
        lines = data.decode("utf-8", "replace").splitlines()
        modality = "image" if c.lines == "images" else "text"
        return [str(i) for i in range(1, len(lines) + 1)], lines, modality, "line", "line"
    if ext == "parquet":
        with store.open(rel) as fh:
            parquet = pq.ParquetFile(fh)
            names = list(parquet.schema_arrow.names)
            # only the columns an item can come from: a dataset's metadata (LAION's) has many
            # more, some of them vectors, read for nothing otherwise
            usable = {c.id, c.text, c.image, "id", "text", "image"}
            table = parquet.read(columns=[n for n in names if n in usable])
        records = table.to_pydict()
        count = table.num_rows
    elif ext == "csv":
        reader = csv.DictReader(io.StringIO(data.decode("utf-8", "replace")))
        rows = list(reader)
        names = list(reader.fieldnames or [])
        records = {n: [r.get(n) for r in rows] for n in names}
        count = len(rows)
    elif ext == "jsonl":
        rows = [_json_row(line) for line in data.decode("utf-8", "replace").splitlines()]
        names = sorted({k for r in rows for k in r})
        records = {n: [r.get(n) for r in rows] for n in names}
        count = len(rows)
    else:
        raise Unreadable(f"{shown}: not a list this reads (.txt, .jsonl, .csv, .parquet)")
    modality, column = _value_column(names, c, shown)
    if c.id is not None and c.id not in names:
        raise Unreadable(f"{shown}: no id column {c.id!r} (columns: {', '.join(names)})")
    id_column = c.id or ("id" if "id" in names else None)
    ids: list[str | None]
    if id_column is None:
        ids = [str(i) for i in range(1, count + 1)]
    else:
        ids = [None if v is None else str(v) for v in records[id_column]]
    return ids, records[column], modality, column, id_column or "row number"


def _value_column(names: list[str], c: Columns, shown: str) -> tuple[str, str]:
    if c.text and c.image:
        raise Unreadable(f"{shown}: name --text-column or --image-column, not both")
    wanted = [("text", c.text)] if c.text else [("image", c.image)] if c.image else []
    if not wanted:  # neither named: the file has exactly one of the default columns
        wanted = [(m, m) for m in ("text", "image") if m in names]
        if len(wanted) != 1:
            which = "both text and image" if wanted else "neither a text nor an image"
            raise Unreadable(
                f"{shown}: has {which} column (columns: {', '.join(names)}); "
                "name one with --text-column or --image-column"
            )
    modality, column = wanted[0]
    if column not in names:
        raise Unreadable(f"{shown}: no {modality} column {column!r} (columns: {', '.join(names)})")
    return modality, str(column)


def _json_row(line: str) -> dict[str, Any]:
    """A line's object; a line that is not one has no columns (its item: "missing")."""
    try:
        row = json.loads(line)
    except ValueError:
        return {}
    return row if isinstance(row, dict) else {}


def _item(store: Store, folder: str, id_: str, value: Any, modality: str) -> Item:
    """A row's item: a text, an image URL, or an image file (read later); or why it has none."""
    if not isinstance(value, str):
        return Item(id_, error=f"{modality}: missing" if value is None else f"{modality}: not text")
    if modality == "text":
        return Item(id_, error="text: empty") if not value.strip() else Item(id_, text=value)
    if not value.strip():
        return Item(id_, error="image: empty")
    scheme = value.split(":", 1)[0].lower() if ":" in value else ""
    if scheme in ("http", "https", "data"):
        return Item(id_, url=value)
    if value.startswith(S3):
        if store.local:
            return Item(id_, error=f"image: {value} is on S3 but the list is not")
        path = value[len(S3) :]
        return Item(id_, load=lambda: bytes(store.fs.open_input_stream(path).read()))
    if scheme and len(scheme) > 1:  # not a Windows drive letter
        return Item(id_, error=f"image: {scheme}: URLs are not fetched (http, https, s3, data)")
    if store.local and value.startswith("/"):
        return Item(id_, load=lambda: bytes(store.fs.open_input_stream(value).read()))
    rel = f"{folder}/{value}" if folder else value
    return Item(id_, load=lambda: store.read(rel))
