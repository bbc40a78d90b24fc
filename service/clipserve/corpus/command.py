"""`clipserve embed`'s flags and entry point (the contract: docs/corpus.md)."""

from __future__ import annotations

import argparse

from clipserve.settings import add_arguments

DESCRIPTION = """\
Embed a whole collection with one model, in this process (no HTTP), with the server's own
model loading, preprocessing, dtype and batching: each vector is the one /encode returns for
the same item (normalize: true; --no-normalize for the raw vector).

INPUT is one of:
  a folder (or s3://bucket/prefix) of images, recursive; found by extension or by content;
    id: the path relative to the folder
  a .txt file: one item per line (texts, or with --lines images image URLs/paths);
    id: the line number from 1
  a .jsonl, .csv or .parquet file: a row's --text-column or --image-column (URL or path
    relative to the file); id: --id-column, or the row number from 1
  a WebDataset .tar, or a folder/prefix of them: each sample's image member; id: __key__

--output DIR or s3://bucket/prefix receives
  run.json                        the model, its space digest (X-Clip-Space), dimension,
                                  dtypes, normalization, preprocessing, shard size, totals,
                                  input (every run agrees)
  shards/shard-00000.parquet      columns id, embedding (fixed-size list), error
  manifest/shard-00000.json       {"shard","items","failed","model","space","seconds"}:
                                  the commit marker; a shard without one is not published
--lancedb URI also upserts each shard's vectors (id, vector) into a LanceDB table, by id,
before its manifest (exactly once); the table holds one embedding space.
Shards hold --shard-size items each, in sorted input order (one per input .tar for
WebDataset). A re-run skips published shards and never writes an item twice. --slice I/N
(or JOB_COMPLETION_INDEX with CLIPSERVE_EMBED_SLICES) owns only shards with shard % N == I.

Bad items (corrupt, truncated, oversized or unsupported image, unreachable URL, empty text)
become rows with `error` set. Progress: a bar on a terminal, else JSON lines on stdout:
{"event":"start",...}, {"event":"shard","shard":3,"items":1024,"failed":2,"items_per_s":..},
{"event":"done",...}. Exit 0 when the slice is published, 2 for bad usage or unreadable input
(missing path, no permission, wrong credentials, no such bucket), 1 when the run failed
(model load, full disk). S3: credentials from AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
AWS_SESSION_TOKEN, AWS_REGION; endpoint from --s3-endpoint or AWS_ENDPOINT_URL.
Full contract: docs/corpus.md."""

# The server's settings that decide a vector or how an input is read: the same flags and
# CLIPSERVE_* variables as `clipserve serve`, so a ClipJob passes a slot's settings unchanged.
SHARED_SETTINGS = (
    "model",
    "device",
    "dtype",
    "cache_dir",
    "offline",
    "model_config_dir",
    "max_batch_size",
    "max_text_chars",
    "max_image_bytes",
    "max_image_pixels",
    "fetch_timeout_s",
    "fetch_connect_timeout_s",
    "fetch_max_redirects",
    "fetch_allow",
    "fetch_concurrency",
    "preprocess_threads",
    "compute_workers",
    "compute_threads",
    "compile",
    "log_level",
)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """`clipserve embed` and its flags."""
    p = sub.add_parser(
        "embed",
        help="embed a whole collection (folder, list, WebDataset, S3) into Parquet shards",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("input", metavar="INPUT", help="folder, list file, .tar, or s3://bucket/prefix")
    p.add_argument(
        "--output",
        required=True,
        metavar="DIR_OR_S3URL",
        help="output folder or s3://bucket/prefix",
    )
    p.add_argument(
        "--shard-size",
        type=int,
        default=1024,
        metavar="N",
        help="items per output shard (default 1024; WebDataset: one shard per input .tar)",
    )
    p.add_argument(
        "--slice",
        metavar="I/N",
        help="own only shards with shard %% N == I (default: JOB_COMPLETION_INDEX / "
        "CLIPSERVE_EMBED_SLICES when both are set, else 0/1)",
    )
    p.add_argument(
        "--output-dtype",
        choices=("float32", "float16"),
        default="float32",
        help="the stored vectors' type (default float32; the compute dtype is --dtype)",
    )
    p.add_argument(
        "--normalize",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="L2-normalize the vectors (default on)",
    )
    p.add_argument(
        "--lancedb",
        metavar="URI",
        help="also upsert each shard's vectors (id, vector) into a LanceDB table at URI (a "
        "folder or s3://bucket/prefix); one table holds one embedding space (needs "
        "clipserve[lancedb])",
    )
    p.add_argument(
        "--lancedb-table",
        default="clipserve",
        metavar="NAME",
        help="the LanceDB table (default clipserve)",
    )
    p.add_argument(
        "--in-flight",
        type=int,
        metavar="N",
        help="items read and embedding at once: with their bytes, the run's memory beside the "
        "model (default max(256, 4 x --max-batch-size), enough to fill every batch)",
    )
    p.add_argument(
        "--lines",
        choices=("texts", "images"),
        default="texts",
        help="what a .txt file's lines are (default texts)",
    )
    p.add_argument("--id-column", metavar="NAME", help="the id column of a list (default id)")
    p.add_argument("--text-column", metavar="NAME", help="the text column of a list (default text)")
    p.add_argument(
        "--image-column", metavar="NAME", help="the image URL/path column of a list (default image)"
    )
    p.add_argument(
        "--s3-endpoint",
        metavar="URL",
        help="S3-compatible endpoint, e.g. http://minio:9000 (default AWS_ENDPOINT_URL, else AWS)",
    )
    p.add_argument(
        "--progress",
        choices=("auto", "bar", "lines"),
        default="auto",
        help="a bar, JSON lines on stdout, or auto (a bar on a terminal)",
    )
    add_arguments(p, only=SHARED_SETTINGS)


def main(args: argparse.Namespace) -> int:
    """Run `clipserve embed`; the exit code (0 done, 1 run failed, 2 bad usage or input)."""
    from clipserve.corpus.run import embed_main  # imports torch: keep `--help` fast

    return embed_main(args)
