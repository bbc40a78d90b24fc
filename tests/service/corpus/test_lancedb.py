"""`clipserve embed --lancedb`: the vectors also in a real LanceDB table (a local folder),
exactly once through a shard redone after a crash, and never two spaces in one table."""

from __future__ import annotations

from pathlib import Path

import lancedb
import numpy as np
import pytest
import torch

from tests.service.corpus.conftest import GOOD, embed, read_output
from tests.support.checkpoints import ARCH, tiny_state


def _table(folder: Path, name: str = "clipserve") -> lancedb.table.Table:
    return lancedb.connect(str(folder)).open_table(name)


@pytest.fixture(scope="module")
def lance_run(
    pictures: tuple[Path, list[str]], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, Path]:
    """The picture folder embedded into an output and a LanceDB folder."""
    root = tmp_path_factory.mktemp("lance-run")
    out, db = root / "out", root / "db"
    ran = embed(str(pictures[0]), "--output", str(out), "--shard-size", "64", "--lancedb", str(db))
    assert ran.code == 0, ran.stderr
    return out, db


def test_the_table_holds_each_vector_of_the_output_once_and_finds_it(lance_run):
    out, db = lance_run
    got = read_output(out)
    stored = {r["id"]: r["embedding"] for r in got["rows"] if r["error"] is None}
    table = _table(db)
    rows = table.to_arrow().to_pylist()
    assert len(rows) == len(stored) == GOOD  # the ten bad pictures have no vector to store
    assert {r["id"] for r in rows} == set(stored)
    for row in rows[::37]:
        assert np.array_equal(np.array(row["vector"]), np.array(stored[row["id"]])), row["id"]
    metadata = table.schema.metadata
    assert metadata[b"clipserve.space"].decode() == got["run"]["space"]
    assert metadata[b"clipserve.model"].decode() == got["run"]["model"]
    assert got["run"]["lancedb"] == {"uri": str(db), "table": "clipserve"}
    some = rows[100]
    [hit] = table.search(np.array(some["vector"], dtype=np.float32)).limit(1).to_list()
    assert hit["id"] == some["id"]


def test_a_shard_redone_after_a_crash_is_upserted_not_added_twice(
    pictures: tuple[Path, list[str]], tmp_path: Path
):
    """Killed after a shard's rows went into the table but before its manifest: the re-run
    does the shard again, and the table still holds each id once."""
    out, db = tmp_path / "out", tmp_path / "db"
    args = (str(pictures[0]), "--output", str(out), "--shard-size", "64", "--lancedb", str(db))
    assert embed(*args).code == 0
    before = _table(db).count_rows()
    (out / "manifest" / "shard-00002.json").unlink()  # the crash's window
    again = embed(*args)
    assert again.code == 0, again.stderr
    assert (again.event("start")["skipped"], again.event("done")["shards"]) == (4, 1)
    ids = _table(db).to_arrow().column("id").to_pylist()
    assert len(ids) == len(set(ids)) == before == GOOD


def test_another_space_never_goes_into_the_same_table(
    pictures: tuple[Path, list[str]], lance_run, tmp_path: Path
):
    _, db = lance_run
    count = _table(db).count_rows()
    checkpoint = tmp_path / "other.pt"
    torch.save(tiny_state(seed=3), checkpoint)  # the same architecture and size, other weights
    other = embed(
        str(pictures[0]), "--output", str(tmp_path / "out"), "--lancedb", str(db),
        model=f"{ARCH}:{checkpoint}",
    )  # fmt: skip
    assert other.code == 2
    assert "holds vectors of space random:" in other.stderr and "use another table" in other.stderr
    assert _table(db).count_rows() == count
    elsewhere = embed(
        str(pictures[0]), "--output", str(tmp_path / "out2"), "--lancedb", str(db),
        "--lancedb-table", "other-weights", model=f"{ARCH}:{checkpoint}",
    )  # fmt: skip
    assert elsewhere.code == 0, elsewhere.stderr
    assert _table(db, "other-weights").count_rows() == GOOD


def test_a_resume_must_name_the_same_table_and_one_process_writes_it(
    pictures: tuple[Path, list[str]], lance_run, tmp_path: Path
):
    out, db = lance_run
    without = embed(str(pictures[0]), "--output", str(out), "--shard-size", "64")
    assert without.code == 2 and "lancedb is {" in without.stderr  # its shards would be missing
    sliced = embed(
        str(pictures[0]), "--output", str(tmp_path / "out"), "--lancedb", str(db),
        "--slice", "0/2",
    )  # fmt: skip
    assert sliced.code == 2
    assert "--lancedb: one process writes the table, not slice 0/2 of several" in sliced.stderr
