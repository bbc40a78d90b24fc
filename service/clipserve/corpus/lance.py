"""`--lancedb URI`: every published shard's vectors also upserted into a LanceDB table.

The Parquet output stays the record of the run (every item, its error, the manifests); the table
gets the items that have a vector, as `id` and `vector` (a fixed-size list of the output dtype),
ready for `table.search(query_vector)`. A shard is upserted by id before its manifest is written
(output.py), so a run killed between the two does the shard again and upserts the same rows
again: nothing twice, nothing missing. The table's schema carries the embedding-space digest
(`clipserve.space`, as `X-Clip-Space`), and a run of another space, or vectors of another size
or type, is refused before it writes: one table never mixes spaces. One process writes the
table (LanceDB commits of several writers at once are not retried here), so `--slice I/N`
with N > 1 is refused.

lancedb is an optional dependency (`pip install 'clipserve[lancedb]'`), imported only here.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pyarrow as pa

from clipserve.corpus.store import S3, Unreadable

SPACE_KEY = b"clipserve.space"
MODEL_KEY = b"clipserve.model"


class LanceTable:
    """One LanceDB table that this run's vectors go into."""

    def __init__(
        self,
        uri: str,
        name: str,
        run: dict[str, Any],
        vector_type: pa.DataType,
        endpoint: str | None = None,
    ) -> None:
        """The table `name` at `uri` (a folder, or s3://bucket/prefix with the S3 endpoint from
        `endpoint` or AWS_ENDPOINT_URL and credentials from the AWS_* variables)."""
        try:
            import lancedb
        except ImportError as exc:
            raise Unreadable(
                "--lancedb: the lancedb package is not installed (pip install 'clipserve[lancedb]')"
            ) from exc
        self.shown = f"{uri} table {name!r}"
        self.schema = pa.schema(
            [
                pa.field("id", pa.string(), nullable=False),
                pa.field("vector", pa.list_(vector_type, int(run["dimension"]))),
            ],
            metadata={SPACE_KEY: run["space"], MODEL_KEY: run["model"]},
        )
        try:
            db = lancedb.connect(uri, storage_options=_s3_options(uri, endpoint))
            try:
                self._table = db.open_table(name)
            except ValueError:  # "Table ... was not found"
                self._table = db.create_table(name, schema=self.schema)
        except (OSError, ValueError, RuntimeError) as exc:
            raise Unreadable(f"--lancedb {self.shown}: {exc}") from exc
        self._check(self._table.schema)

    def _check(self, there: pa.Schema) -> None:
        """Refuse a table of another space, or of vectors of another size or type."""
        space = (there.metadata or {}).get(SPACE_KEY)
        if space is None:
            raise Unreadable(
                f"--lancedb {self.shown}: has no {SPACE_KEY.decode()} in its schema (not written "
                "by clipserve embed): its vectors' space is unknown; use another table"
            )
        if space != self.schema.metadata[SPACE_KEY]:
            raise Unreadable(
                f"--lancedb {self.shown}: holds vectors of space {space.decode()}, this run's "
                f"are {self.schema.metadata[SPACE_KEY].decode()}: use another table"
            )
        if there.field("vector").type != self.schema.field("vector").type:
            raise Unreadable(
                f"--lancedb {self.shown}: its vectors are {there.field('vector').type}, this "
                f"run's {self.schema.field('vector').type}: use another table"
            )

    def upsert(self, ids: list[str], vectors: np.ndarray, missing: np.ndarray) -> None:
        """The rows with a vector, inserted, or replacing the rows of the same id."""
        keep = ~missing
        if not keep.any():
            return
        dim = vectors.shape[1]
        column = pa.FixedSizeListArray.from_arrays(pa.array(vectors[keep].reshape(-1)), dim)
        rows = pa.table(
            {"id": [i for i, k in zip(ids, keep, strict=True) if k], "vector": column},
            schema=self.schema,
        )
        (
            self._table.merge_insert("id")
            .when_matched_update_all()
            .when_not_matched_insert_all()
            .execute(rows)
        )


def _s3_options(uri: str, endpoint: str | None) -> dict[str, str] | None:
    """Lance's object-store options for an S3-compatible endpoint (it reads the AWS_*
    credentials itself); None for a folder or AWS's own endpoints."""
    endpoint = endpoint or os.environ.get("AWS_ENDPOINT_URL") or None
    if not uri.startswith(S3) or endpoint is None:
        return None
    return {"endpoint": endpoint, "allow_http": str(endpoint.startswith("http://")).lower()}
