"""`clipserve embed`: the flags read, the input and output opened, the model loaded, the slice's
unpublished shards embedded; the exit code (docs/corpus.md)."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import sys
from dataclasses import dataclass, replace
from typing import Any

from clipserve.corpus.embedder import Embedder, RunFailed
from clipserve.corpus.items import (
    LIST_EXTENSIONS,
    Corpus,
    extension,
    folder_of_images,
    webdataset,
)
from clipserve.corpus.lance import LanceTable
from clipserve.corpus.lists import Columns, list_file
from clipserve.corpus.output import MANIFESTS, SHARDS, Output, vector_type
from clipserve.corpus.progress import Progress
from clipserve.corpus.store import Store, Unreadable, open_store
from clipserve.engine.engine import Engine
from clipserve.metrics import Metrics
from clipserve.models import ClipModel, ModelLoadError, add_model_configs, parse_spec
from clipserve.redact import redact, redact_logs
from clipserve.settings import Settings, from_args

log = logging.getLogger("clipserve.embed")


class Usage(Exception):
    """A flag or variable that makes no sense; exit 2."""


@dataclass(frozen=True)
class Slice:
    """This process owns the shards with `shard % count == index`."""

    index: int
    count: int

    def owns(self, shard: int) -> bool:
        return shard % self.count == self.index

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"


def parse_slice(flag: str | None, environ: dict[str, str] | os._Environ[str]) -> Slice:
    """--slice I/N, else JOB_COMPLETION_INDEX with CLIPSERVE_EMBED_SLICES, else 0/1."""
    index, count = environ.get("JOB_COMPLETION_INDEX"), environ.get("CLIPSERVE_EMBED_SLICES")
    raw = flag or (f"{index}/{count}" if index is not None and count is not None else "0/1")
    where = "--slice" if flag else "JOB_COMPLETION_INDEX/CLIPSERVE_EMBED_SLICES"
    i, _, n = raw.partition("/")
    try:
        part = Slice(int(i), int(n))
    except ValueError:
        raise Usage(f"{where}: {raw!r} is not I/N (e.g. 0/4)") from None
    if not 0 <= part.index < part.count:
        raise Usage(f"{where}: {raw!r} needs 0 <= I < N")
    return part


def open_corpus(store: Store, args: argparse.Namespace) -> Corpus:
    """What INPUT is: a folder of images or of .tar files, a .tar, or a list file."""
    kind = store.kind().name
    if kind == "NotFound":
        raise Unreadable(f"{store.url}: no such file, folder or bucket prefix")
    if kind == "Directory":
        files = store.files()
        tars = [f for f in files if extension(f) == "tar"]
        return webdataset(store, tars) if tars else folder_of_images(store, args.shard_size)
    folder, _, name = store.root.rpartition("/")
    parent = replace(store, root=folder, url=store.url[: -len(name) - 1] or folder)
    if extension(name) == "tar":
        return webdataset(parent, [name])
    if extension(name) in LIST_EXTENSIONS:
        columns = Columns(args.id_column, args.text_column, args.image_column, args.lines)
        return list_file(parent, name, columns, args.shard_size)
    raise Unreadable(f"{store.url}: not a folder, .tar or list file (.txt, .jsonl, .csv, .parquet)")


def run_info(model: ClipModel, corpus: Corpus, args: argparse.Namespace) -> dict[str, Any]:
    """run.json: what every run and slice writing into this output must agree on."""
    info = model.info()
    return {
        "model": model.spec.raw,
        # The spec names weights that can change under it (a moved hub tag, a replaced file);
        # the digest does not, so a resume with other weights is refused, not mixed in.
        "space": model.space.digest,
        "dimension": model.embed_dim,
        "dtype": model.precision,
        "output_dtype": args.output_dtype,
        "normalization": "l2" if args.normalize else "none",
        "preprocessing": info["preprocess"],
        "shard_size": args.shard_size,
        "total_shards": corpus.shards,
        "total_items": corpus.total_items,
        "input": corpus.description,
        # a resume without the table (or with another) would leave its shards out of it
        "lancedb": {"uri": args.lancedb, "table": args.lancedb_table} if args.lancedb else None,
    }


def embed_main(args: argparse.Namespace) -> int:
    """The whole command; its exit code."""
    settings = from_args(args)
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    logging.getLogger("clipserve").setLevel(settings.log_level.upper())
    redact_logs()
    try:
        return _embed(args, settings)
    except (Usage, Unreadable) as exc:
        print(f"clipserve embed: {redact(str(exc))}", file=sys.stderr)
        return 2
    except RunFailed as exc:
        print(f"clipserve embed: {redact(str(exc))}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("clipserve embed: interrupted; run it again to resume", file=sys.stderr)
        return 130


def _embed(args: argparse.Namespace, settings: Settings) -> int:
    part = parse_slice(args.slice, os.environ)
    if len(settings.model) != 1:
        raise Usage(f"--model: give one model, not {len(settings.model)}")
    if args.shard_size < 1:
        raise Usage(f"--shard-size: {args.shard_size} is not a positive number")
    if args.in_flight is not None and args.in_flight < 1:
        raise Usage(f"--in-flight: {args.in_flight} is not a positive number")
    if args.lancedb and part.count > 1:
        raise Usage(f"--lancedb: one process writes the table, not slice {part} of several")
    in_store = open_store(args.input, endpoint=args.s3_endpoint)
    in_store.check_bucket()
    corpus = open_corpus(in_store, args)
    out_store = open_store(args.output, endpoint=args.s3_endpoint)
    out_store.check_bucket()  # wrong credentials or no such bucket: now, not after loading
    out_store.names(MANIFESTS)

    # No embedding cache (a corpus is read once); a queue that holds what is in flight.
    in_flight = args.in_flight or max(256, 4 * (settings.max_batch_size or 128))
    settings = replace(settings, cache_mb=0, max_queue=in_flight + 1)
    if settings.model_config_dir:
        add_model_configs(settings.model_config_dir)
    engine = Engine(settings, [parse_spec(settings.model[0])], Metrics())
    try:
        engine.load()
    except (ModelLoadError, ValueError) as exc:
        raise RunFailed(f"{settings.model[0]}: {exc}") from exc
    try:
        return _run(args, engine, corpus, out_store, part, in_flight)
    finally:
        engine.stop()


def _run(
    args: argparse.Namespace,
    engine: Engine,
    corpus: Corpus,
    out_store: Store,
    part: Slice,
    in_flight: int,
) -> int:
    model = next(iter(engine.models.values()))
    output = Output(out_store, run_info(model, corpus, args), args.output_dtype)
    try:
        output.claim()
    except OSError as exc:
        raise Unreadable(f"{out_store.url}: cannot write: {exc.strerror or exc}") from exc
    if args.lancedb:  # after the claim: a run refused there creates no table
        dtype = vector_type(args.output_dtype)
        output.lance = LanceTable(
            args.lancedb, args.lancedb_table, output.run, dtype, endpoint=args.s3_endpoint
        )
    out_store.clear_temporaries(SHARDS)
    out_store.clear_temporaries(MANIFESTS)
    out_store.clear_temporaries("")
    published = output.published()
    mine = [k for k in range(corpus.shards) if part.owns(k)]
    todo = [k for k in mine if k not in published]
    size = args.shard_size
    todo_items = None
    if corpus.total_items is not None:
        todo_items = sum(min(size, corpus.total_items - k * size) for k in todo)
    bar = {"auto": None, "bar": True, "lines": False}[args.progress]
    progress = Progress(todo_items, bar=bar)
    progress.event(
        "start",
        total_shards=corpus.shards,
        total_items=corpus.total_items,
        slice=str(part),
        todo=len(todo),
        skipped=len(mine) - len(todo),
        space=output.run["space"],
    )
    embedder = Embedder(engine, output, progress, normalize=args.normalize, in_flight=in_flight)

    async def main() -> None:
        engine.single_threaded_here()  # this loop's thread, as the server's
        try:
            await embedder.run(corpus, todo)
        finally:
            await engine.aclose()

    try:
        asyncio.run(main())
    finally:
        progress.finish()
    skipped_items, skipped_failed = output.counted([k for k in mine if k in published])
    progress.event(
        "done",
        shards=len(todo),
        skipped=len(mine) - len(todo),
        skipped_items=skipped_items,
        skipped_failed=skipped_failed,
        items=progress.items,
        failed=progress.failed,
        seconds=round(progress.seconds, 2),
        cpu_seconds=round(progress.cpu_seconds, 2),
        items_per_s=round(progress.rate, 1),
        # the ClipJob operator checks it against the ClipService's pending slot before a
        # promotion; the termination message holds this line when the log is long
        space=output.run["space"],
    )
    return 0
