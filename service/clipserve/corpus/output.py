"""The output of a run: Parquet shards, each published with its manifest, and run.json.

A shard is published when its manifest exists; the shard file is written first (atomically,
store.py), so a manifest never points at a missing or partial file, and a run killed between
the two leaves a shard that the next run writes again, whole.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from clipserve.corpus.lance import LanceTable
from clipserve.corpus.store import Store, Unreadable

SHARDS, MANIFESTS, RUN = "shards", "manifest", "run.json"
_MANIFEST = re.compile(r"shard-(\d{5,})\.json")


class RunMismatch(Unreadable):
    """The output folder holds another run (another model, shard size or input)."""


def vector_type(dtype: str) -> pa.DataType:
    """The Arrow type of one stored number: `--output-dtype` float32 or float16."""
    return pa.float16() if dtype == "float16" else pa.float32()


def shard_name(k: int) -> str:
    """`shard-00003`: the name of shard k's files (zero-padded, so names sort by number)."""
    return f"shard-{k:05d}"


@dataclass(frozen=True)
class ShardResult:
    """One shard's rows, in input order: a vector or an error for each id."""

    ids: list[str]
    vectors: Sequence[np.ndarray | None]
    errors: list[str | None]

    @property
    def failed(self) -> int:
        """Items without a vector."""
        return sum(e is not None for e in self.errors)


class Output:
    """The output folder of one run: what is published, and publishing more."""

    def __init__(self, store: Store, run: dict[str, Any], dtype: str) -> None:
        self.store = store
        self.run = run
        self.lance: LanceTable | None = None  # set once the run has claimed the folder
        self._dtype = vector_type(dtype)
        self._np_dtype = np.float16 if dtype == "float16" else np.float32
        self._metadata = {
            f"clipserve.{key}": value if isinstance(value, str) else json.dumps(value)
            for key, value in run.items()
            if key in ("model", "space", "dimension", "normalization", "preprocessing", "dtype")
        }

    def claim(self) -> None:
        """Write run.json, or check that the one there describes this same run."""
        there = self._read_run()
        if there is None:
            self.store.publish(RUN, _json(self.run))
            return
        differs = [k for k in sorted(set(there) | set(self.run)) if there.get(k) != self.run.get(k)]
        if differs:
            k = differs[0]
            raise RunMismatch(
                f"{self.store.shown(RUN)}: another run wrote this folder ({k} is "
                f"{there.get(k)!r} there, {self.run.get(k)!r} here): use another --output"
            )

    def published(self) -> set[int]:
        """The shards that have a manifest (the only ones a reader or a re-run trusts)."""
        found = set()
        for name in self.store.names(MANIFESTS):
            if m := _MANIFEST.fullmatch(name):
                found.add(int(m.group(1)))
        return found

    def counted(self, shards: list[int]) -> tuple[int, int]:
        """(items, failed) of published shards, from their manifests: what a resumed slice
        reports for the shards it skipped (the ClipJob operator's counts)."""
        items = failed = 0
        for k in shards:
            manifest = json.loads(self.store.read(f"{MANIFESTS}/{shard_name(k)}.json"))
            items, failed = items + int(manifest["items"]), failed + int(manifest["failed"])
        return items, failed

    def publish(self, k: int, result: ShardResult, seconds: float) -> dict[str, Any]:
        """Write shard k (and upsert it into the LanceDB table), then its manifest (the commit
        marker); the manifest's content."""
        vectors, missing = self._vectors(result)
        parquet = self._parquet(result, vectors, missing)
        self.store.publish(f"{SHARDS}/{shard_name(k)}.parquet", parquet)
        if self.lance is not None:
            self.lance.upsert(result.ids, vectors, missing)
        manifest = {
            "shard": k,
            "items": len(result.ids),
            "failed": result.failed,
            "model": self.run["model"],
            "space": self.run["space"],
            "seconds": round(seconds, 3),
        }
        self.store.publish(f"{MANIFESTS}/{shard_name(k)}.json", _json(manifest))
        return manifest

    def _vectors(self, r: ShardResult) -> tuple[np.ndarray, np.ndarray]:
        """(n, dim) vectors in the output dtype (zeros where missing), and which are missing."""
        flat = np.zeros((len(r.ids), int(self.run["dimension"])), dtype=self._np_dtype)
        for i, v in enumerate(r.vectors):
            if v is not None:
                flat[i] = v
        return flat, np.array([v is None for v in r.vectors], dtype=bool)

    def _parquet(self, r: ShardResult, vectors: np.ndarray, missing: np.ndarray) -> bytes:
        flat = pa.array(vectors.reshape(-1), type=self._dtype)
        embedding = pa.FixedSizeListArray.from_arrays(
            flat, vectors.shape[1], mask=pa.array(missing)
        )
        table = pa.table(
            {
                "id": pa.array(r.ids, type=pa.string()),
                "embedding": embedding,
                "error": pa.array(r.errors, type=pa.string()),
            }
        ).replace_schema_metadata(self._metadata)
        buf = io.BytesIO()
        pq.write_table(table, buf)
        return buf.getvalue()

    def _read_run(self) -> dict[str, Any] | None:
        if RUN not in self.store.names(""):
            return None
        try:
            found = json.loads(self.store.read(RUN))
        except ValueError as exc:
            raise RunMismatch(f"{self.store.shown(RUN)}: not JSON ({exc})") from exc
        if not isinstance(found, dict):
            raise RunMismatch(f"{self.store.shown(RUN)}: not a JSON object")
        return found


def _json(value: Any) -> bytes:
    return (json.dumps(value, indent=1, sort_keys=True) + "\n").encode()
